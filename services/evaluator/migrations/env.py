"""Alembic environment of the evaluator schema."""

from sqlmodel import SQLModel

import services.evaluator.tables  # noqa: F401 - registers the tables on SQLModel.metadata
from mlops.db import run_migrations_env
from services.evaluator.tables import SCHEMA

run_migrations_env(SQLModel.metadata, SCHEMA)
