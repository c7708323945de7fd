"""Alembic, driven from code: each service keeps its own migrations folder and its own schema.

A service's `migrations/env.py` is two lines: import its models' metadata and call
`run_migrations_env(metadata, schema)`. Start-up calls `migrate(database, folder, schema)`.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from alembic import command, context
from alembic.config import Config
from sqlalchemy import MetaData, pool, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from mlops.db.database import Database


def alembic_config(url: str, folder: Path, schema: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(folder))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    config.set_main_option("mlops.schema", schema)
    return config


# Alembic keeps its migration context in module globals: one migration at a time per process.
# Replicas in separate processes are serialised by the advisory lock taken in `run_migrations_env`.
_in_process = threading.Lock()


async def migrate(database: Database, folder: Path, schema: str, revision: str = "head") -> None:
    """Bring `schema` up to `revision`. Alembic is synchronous, so it runs in a worker thread."""
    config = alembic_config(database.settings.url, folder, schema)

    def upgrade() -> None:
        with _in_process:
            command.upgrade(config, revision)

    await asyncio.to_thread(upgrade)


def create_schema_sql(schema: str) -> str:
    """Create `schema` only when it is missing. `CREATE SCHEMA IF NOT EXISTS` would need CREATE on
    the database even when the schema is there; a service's role owns its schema and has no such right."""
    quoted = schema.replace('"', '""')
    literal = schema.replace("'", "''")
    return (
        f"DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = '{literal}') "
        f'THEN CREATE SCHEMA "{quoted}"; END IF; END $$'
    )


def run_migrations_env(target_metadata: MetaData, schema: str | None = None) -> None:
    """Body of a service's `env.py`: online migrations over asyncpg, version table in the service schema."""
    config = context.config
    schema = schema or config.get_main_option("mlops.schema")
    url = config.get_main_option("sqlalchemy.url")
    if context.is_offline_mode():
        context.configure(
            url=url, target_metadata=target_metadata, version_table_schema=schema, include_schemas=True
        )
        with context.begin_transaction():
            context.run_migrations()
        return

    def run(connection: Connection) -> None:
        # Replicas starting together must not migrate concurrently: one waits for the other.
        connection.execute(
            text("SELECT pg_advisory_xact_lock(hashtext(:lock))"), {"lock": f"migrate:{schema}"}
        )
        connection.execute(text(create_schema_sql(schema)))
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            version_table_schema=schema,
            include_schemas=True,
            # A service sees only its own schema: autogenerate never touches another service's tables.
            include_name=lambda name, kind, _: kind != "schema" or name == schema,
        )
        with context.begin_transaction():
            context.run_migrations()

    async def run_async() -> None:
        engine = create_async_engine(url, poolclass=pool.NullPool)
        try:
            async with engine.begin() as connection:
                await connection.run_sync(run)
        finally:
            await engine.dispose()

    asyncio.run(run_async())
