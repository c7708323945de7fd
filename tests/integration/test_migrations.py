"""Every service's migrations build exactly the tables its models describe (no drift either way)."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlmodel import SQLModel

from mlops.db import migrate

BUS_TABLES = {"inbox", "outbox", "alembic_version"}
SERVICES = ["registry"]


def _table_of(item: tuple) -> str:
    """The table an autogenerate difference is about: ('remove_table', Table), ('add_column', schema, table, …)."""
    subject = item[1]
    if hasattr(subject, "table"):
        return subject.table.name
    if hasattr(subject, "name") and not isinstance(subject, str):
        return subject.name
    return item[2]


def _differences(connection, schema: str) -> list:
    context = MigrationContext.configure(
        connection,
        opts={
            "include_schemas": True,
            "include_name": lambda name, kind, _: kind != "schema" or name == schema,
        },
    )
    mine = {t.name for t in SQLModel.metadata.tables.values() if t.schema == schema}
    differences = []
    for diff in compare_metadata(context, SQLModel.metadata):
        item = diff[0] if isinstance(diff, list) else diff
        table = _table_of(item)
        if table in BUS_TABLES:
            continue  # created by mlops.bus.create_bus_tables, not by the models
        if item[0] in ("add_table",) and table not in mine:
            continue  # another service's model, in another schema
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
