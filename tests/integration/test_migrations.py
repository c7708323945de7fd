"""Every service's migrations build exactly the tables its models describe (no drift either way)."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlmodel import SQLModel

from mlops.db import migrate

BUS_TABLES = {"inbox", "outbox", "alembic_version"}
SERVICES = ["registry", "trainer", "evaluator", "deployer", "monitor"]


def _location(item: tuple) -> tuple[str | None, str]:
    """(schema, table) an autogenerate difference is about: ('add_index', Index), ('add_column', schema, table, …)."""
    subject = item[1]
    if hasattr(subject, "table"):
        return subject.table.schema, subject.table.name
    if hasattr(subject, "schema") and not isinstance(subject, str):
        return subject.schema, subject.name
    return item[1], item[2]


def _differences(connection, schema: str) -> list:
    context = MigrationContext.configure(
        connection,
        opts={
            "include_schemas": True,
            "include_name": lambda name, kind, _: kind != "schema" or name == schema,
        },
    )
    differences = []
    for diff in compare_metadata(context, SQLModel.metadata):
        item = diff[0] if isinstance(diff, list) else diff
        where, table = _location(item)
        if where != schema:
            continue  # another service's models, in another schema
        if table in BUS_TABLES:
            continue  # created by mlops.bus.create_bus_tables, not by the models
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
