"""Alembic environment of the trainer schema."""

from sqlmodel import SQLModel

import services.trainer.tables  # noqa: F401 - registers the tables on SQLModel.metadata
from mlops.db import run_migrations_env
from services.trainer.tables import SCHEMA

run_migrations_env(SQLModel.metadata, SCHEMA)
