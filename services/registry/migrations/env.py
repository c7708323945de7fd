"""Alembic environment of the registry schema."""

from sqlmodel import SQLModel

import services.registry.tables  # noqa: F401 - registers the tables on SQLModel.metadata
from mlops.db import run_migrations_env
from services.registry.tables import SCHEMA

run_migrations_env(SQLModel.metadata, SCHEMA)
