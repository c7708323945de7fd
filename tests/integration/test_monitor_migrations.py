"""The monitor's migrations build exactly the tables its models describe."""

from __future__ import annotations

from mlops.db import migrate
from services.monitor.__main__ import MIGRATIONS
from services.monitor.tables import SCHEMA
from tests.integration.test_migrations import _differences


async def test_the_monitor_schema_matches_its_models(database):
    await migrate(database, MIGRATIONS, SCHEMA)
    async with database.engine.connect() as connection:
        differences = await connection.run_sync(_differences, SCHEMA)
    assert differences == [], f"models and migrations disagree; add a migration: {differences}"
