"""Database start-up and migrations against the real PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import sys
import time

import pytest
from sqlalchemy import text

from mlops.db import Database, migrate
from mlops.errors import Unavailable
from mlops.settings import DatabaseSettings
from tests.integration.bus_helpers import MIGRATIONS, SCHEMA


async def test_migrations_create_the_service_schema_and_are_idempotent(database):
    await migrate(database, MIGRATIONS, SCHEMA)
    await migrate(database, MIGRATIONS, SCHEMA)
    async with database.session() as session:
        version = await session.exec(text(f'SELECT version_num FROM "{SCHEMA}".alembic_version'))
        assert version.scalar_one() == "0001"
        tables = await session.exec(
            text("SELECT table_name FROM information_schema.tables WHERE table_schema = :s ORDER BY 1"),
            params={"s": SCHEMA},
        )
        assert {"inbox", "outbox", "handled", "alembic_version"} <= {row[0] for row in tables}


RACER = """
import asyncio, sys
from pathlib import Path
from mlops.db import Database, migrate
from mlops.settings import DatabaseSettings

async def main():
    database = Database(DatabaseSettings())
    await migrate(database, Path(sys.argv[1]), sys.argv[2])
    await database.close()

asyncio.run(main())
"""


async def test_replicas_migrating_at_once_do_not_collide(database, unique):
    schema = f"race_{unique}"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    racers = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-c", RACER, str(MIGRATIONS), schema, env=env, stderr=asyncio.subprocess.PIPE
        )
        for _ in range(3)
    ]
    outcomes = [(await racer.wait(), (await racer.stderr.read()).decode()) for racer in racers]
    try:
        assert [code for code, _ in outcomes] == [0, 0, 0], outcomes
        async with database.session() as session:
            version = await session.exec(text(f'SELECT version_num FROM "{schema}".alembic_version'))
            assert version.all() == [("0001",)]
    finally:
        async with database.transaction() as session:
            await session.exec(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))


async def test_waiting_for_an_absent_database_gives_up_at_its_deadline():
    absent = Database(DatabaseSettings(url="postgresql+asyncpg://mlops:mlops@127.0.0.1:1/mlops"))
    started = time.monotonic()
    with pytest.raises(Unavailable, match="not reachable after"):
        await absent.wait_ready(deadline_s=1.0)
    assert time.monotonic() - started < 5
    await absent.close()
