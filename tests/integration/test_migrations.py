"""Every service's migrations build exactly the tables its models describe (no drift either way)."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlmodel import SQLModel

from mlops.db import migrate

BUS_TABLES = {"inbox", "outbox", "alembic_version"}
SERVICES = ["registry"]


def _differences(connection, schema: str) -> list:
    context = MigrationContext.configure(
        connection,
        opts={"include_schemas": True, "include_name": lambda name, kind, _: kind != "schema" or name == schema},
    )
    tables = {t for t in SQLModel.metadata.tables.values() if t.schema == schema}
    differences = []
    for diff in compare_metadata(context, SQLModel.metadata):
        item = diff[0] if isinstance(diff, list) else diff
        table = getattr(item[1], "table", item[1]) if len(item) > 1 else None
        name = getattr(table, "name", None)
        if name in BUS_TABLES or (table is not None and getattr(table, "schema", schema) != schema):
            continue
        if table is not None and table not in tables and item[0].startswith("add_"):
            continue
        differences.append(diff)
    return differences


@pytest.mark.parametrize("service", SERVICES)
async def test_the_migrated_schema_matches_the_models(database, service):
    from importlib import import_module

    main = import_module(f"services.{service}.__main__")
    tables = import_module(f"services.{service}.tables")
    await migrate(database, main.MIGRATIONS, tables.SCHEMA)
    async with database.engine.connect() as connection:
        differences = await connection.run_sync(_differences, tables.SCHEMA)
    assert differences == [], f"{service}: models and migrations disagree; add a migration: {differences}"
