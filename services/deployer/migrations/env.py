"""Alembic environment of the deployer schema."""

from sqlmodel import SQLModel

import services.deployer.tables  # noqa: F401 - registers the tables on SQLModel.metadata
from mlops.db import run_migrations_env
from services.deployer.tables import SCHEMA

run_migrations_env(SQLModel.metadata, SCHEMA)
