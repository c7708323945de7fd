"""The monitor's migrations build exactly the tables its models describe."""

from __future__ import annotations

import numpy as np

from mlops.db import migrate
from services.monitor.__main__ import MIGRATIONS
from services.monitor.tables import SCHEMA
from tests.integration.test_migrations import _differences


async def test_the_monitor_schema_matches_its_models(database):
    await migrate(database, MIGRATIONS, SCHEMA)
    async with database.engine.connect() as connection:
        differences = await connection.run_sync(_differences, SCHEMA)
    assert differences == [], f"models and migrations disagree; add a migration: {differences}"


async def test_stored_predictions_survive_the_move_to_packed_columns(database, unique):
    """0003 on a scratch schema holding 0002's layout: every batch keeps its rows, the first row of
    each request id, its timestamps, predicted classes (none for '') and values."""
    from importlib import import_module

    from alembic.operations import Operations
    from alembic.runtime.migration import MigrationContext
    from sqlalchemy import text

    from services.monitor.predictions import CLASSES, TIMES, VALUES

    migration = import_module("services.monitor.migrations.versions.0003_prediction_requests")
    schema = f"tests_monitor_{unique}"
    features = np.arange(6, dtype=np.float64)

    def run(connection, step) -> None:
        original = migration.SCHEMA
        migration.SCHEMA = schema
        try:
            with Operations.context(MigrationContext.configure(connection)):
                step()
        finally:
            migration.SCHEMA = original

    def upgrade(connection) -> None:
        connection.execute(text(f"CREATE SCHEMA {schema}"))
        connection.execute(
            text(
                f"CREATE TABLE {schema}.prediction_batches (id bigserial PRIMARY KEY, model varchar NOT NULL, "
                "version bigint NOT NULL, logged_at timestamptz NOT NULL, request_ids text[] NOT NULL, "
                "timestamps float8[] NOT NULL, labels text[], predictions float8[], width int NOT NULL, "
                "features bytea NOT NULL)"
            )
        )
        connection.execute(
            text(
                f"CREATE INDEX prediction_batches_request_ids ON {schema}.prediction_batches USING gin (request_ids)"
            )
        )
        connection.execute(
            text(
                f"INSERT INTO {schema}.prediction_batches (model, version, logged_at, request_ids, timestamps, "
                "labels, predictions, width, features) VALUES "
                "('c', 1, now(), ARRAY['a', 'b', 'a'], ARRAY[10.5, 11.25, 12], ARRAY['yes', '', 'no'], NULL, 2, :f), "
                "('r', 2, now(), ARRAY['z'], ARRAY[13.0], NULL, ARRAY[-1.5], 6, :f), "
                "('c', 1, now(), ARRAY[]::text[], ARRAY[]::float8[], ARRAY[]::text[], NULL, 2, ''::bytea)"
            ),
            {"f": features.tobytes()},
        )
        run(connection, migration.upgrade)

    try:
        async with database.engine.begin() as connection:
            await connection.run_sync(upgrade)
        async with database.session() as session:
            batches = (
                await session.exec(
                    text(
                        f"SELECT id, model, timestamps, class_labels, classes, predictions, features "
                        f"FROM {schema}.prediction_batches ORDER BY id"
                    )
                )
            ).all()
            requests = (
                await session.exec(
                    text(
                        f"SELECT batch_id, request_id, position FROM {schema}.prediction_requests "
                        "ORDER BY batch_id, position"
                    )
                )
            ).all()
        (first, c_id), (second, r_id), (empty, _) = [(b, b.id) for b in batches]
        assert np.frombuffer(first.timestamps, TIMES).tolist() == [10.5, 11.25, 12.0]
        assert first.class_labels == ["no", "yes"]
        assert np.frombuffer(first.classes, CLASSES).tolist() == [1, -1, 0]
        assert first.predictions is None and first.features == features.tobytes()
        assert second.class_labels is None and second.classes is None
        assert np.frombuffer(second.predictions, VALUES).tolist() == [-1.5]
        assert empty.timestamps == b"" and empty.classes == b"" and empty.class_labels == []
        assert [tuple(r) for r in requests] == [(c_id, "a", 0), (c_id, "b", 1), (r_id, "z", 0)]
        async with database.engine.begin() as connection:
            await connection.run_sync(run, migration.downgrade)
    finally:
        async with database.transaction() as session:
            await session.exec(text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
