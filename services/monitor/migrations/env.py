"""Alembic environment of the monitor schema."""

from sqlmodel import SQLModel

import services.monitor.tables  # noqa: F401 - registers the tables on SQLModel.metadata
from mlops.db import run_migrations_env
from services.monitor.tables import SCHEMA

run_migrations_env(SQLModel.metadata, SCHEMA)
