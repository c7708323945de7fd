"""Async database layer: sqlmodel + asyncpg, one schema per service, Alembic migrations."""

from mlops.db.database import Database
from mlops.db.migrations import migrate, run_migrations_env

__all__ = ["Database", "migrate", "run_migrations_env"]
