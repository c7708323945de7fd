"""The monitor's ingest against the real stack (see `monitor_helpers`): malformed batches
dead-lettered, restarts mid-window, and commits written again after their transaction broke.
"""

# The fixtures are imported from monitor_helpers, and pytest hands them to the tests by parameter name.
# ruff: noqa: F811

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime

import numpy as np
import pytest
from sqlalchemy import text

from mlops.db import migrate
from mlops.monitor.v1 import monitor_pb2
from mlops.outbox import Outbox
from services.monitor.__main__ import MIGRATIONS
from services.monitor.core import CountedBatch, MonitorCore
from services.monitor.ingest import inference_group
from services.monitor.predictions import PredictionBatch
from services.monitor.tables import SCHEMA
from tests.integration.bus_helpers import raw_reader, read_until
from tests.integration.conftest import eventually
from tests.integration.monitor_helpers import (
    CLASSES,
    FEATURES,
    TOPIC,
    batch_of,
    declare_model,
    drift_status,
    header,
    monitor,  # noqa: F401 - a shared fixture
    monitor_settings,
    publisher,  # noqa: F401 - a shared fixture
    records_for,
    registry,  # noqa: F401 - a shared fixture
    running_monitor,
    store,  # noqa: F401 - a shared fixture
    training_frame,
)


async def test_a_malformed_batch_goes_to_the_dlq_with_its_reason_and_ingest_goes_on(
    monitor, registry, store, publisher, kafka
):
    model = await declare_model(registry, store, uuid.uuid4().hex[:10])
    bad = batch_of(model, training_frame(model.rng, 5))
    bad.records[3].features.append(1.0)
    unknown = batch_of(model, training_frame(model.rng, 5), version=99)
    async with raw_reader(kafka, TOPIC + ".dlq") as dlq:
        await publisher.publish(bad)
        await publisher.publish(unknown)
        await publisher.publish_encoded(
            TOPIC, model.name, b"\xff\xff not protobuf", [("ce_type", b"mlops.inference.logged.v1")]
        )
        first = await read_until(dlq, records_for(model.name), timeout_s=15)
        second = await read_until(dlq, records_for(model.name), timeout_s=15)
        third = await read_until(dlq, records_for(model.name), timeout_s=15)
    reasons = [header(r, "mlops_dlq_reason") for r in (first, second, third)]
    assert "record 3" in reasons[0] and "has 5 features; feature_names lists 4" in reasons[0]
    assert f"model {model.name!r} has no version 99" in reasons[1]
    assert "does not parse as InferenceLogged" in reasons[2]
    assert header(first, "mlops_dlq_consumer") == monitor.group

    good = batch_of(model, training_frame(model.rng, 7), at=time.time())
    await publisher.publish(good)

    async def counted():
        return any(w.samples == 7 for (m, _, _), w in monitor.core.windows.items() if m == model.name) or any(
            w.sample_count == 7 for v in (await drift_status(monitor, model.name)).versions for w in v.windows
        )

    await eventually(counted, timeout_s=15, what="the good batch counted after the bad ones")


async def _window_row(database, group: str, model: str):
    async with database.session() as session:
        return (
            await session.exec(
                text(
                    f"SELECT sample_count, closed, body FROM {SCHEMA}.windows "
                    "WHERE consumer_group = :g AND model = :m"
                ),
                params={"g": group, "m": model},
            )
        ).all()


async def test_a_restart_mid_window_keeps_its_counts_without_counting_twice(
    database, kafka, bus, store, publisher, registry
):
    """The monitor is stopped mid-window twice: once cleanly, once as by a crash (its last batch
    counted in memory but never committed). The window closes with every row counted exactly once."""
    model = await declare_model(registry, store, uuid.uuid4().hex[:10], window_seconds=20, min_samples=10)
    settings = monitor_settings(flush_interval_ms=60_000)  # commits only on stop and on closing
    start = (int(time.time()) // 20 + 1) * 20  # the next window: it cannot close during the test
    published = 0

    async def publish(n: int) -> None:
        nonlocal published
        await publisher.publish(batch_of(model, training_frame(model.rng, n), at=start + 1))
        published += n

    async with running_monitor(database, kafka, bus, store, publisher, settings) as first:
        await publish(120)
        await eventually(
            lambda: sum(w.samples for w in first.core.windows.values()) == 120, what="first batch"
        )
    rows = await _window_row(database, first.group, model.name)
    assert [(r[0], r[1]) for r in rows] == [(120, False)]  # committed on stop, still open

    async with running_monitor(database, kafka, bus, store, publisher, settings) as second:
        assert sum(w.samples for w in second.core.windows.values()) == 120  # resumed from PostgreSQL
        await publish(80)
        await eventually(
            lambda: sum(w.samples for w in second.core.windows.values()) == 200, what="second batch"
        )
        # A crash: what is in memory is lost, nothing more is committed.
        second.core.write = _refuse_commit  # type: ignore[method-assign]
        second.ingest._stopping.set()
    rows = await _window_row(database, second.group, model.name)
    assert [(r[0], r[1]) for r in rows] == [(120, False)]

    async with running_monitor(
        database, kafka, bus, store, publisher, monitor_settings(consumer_group=settings.consumer_group)
    ) as third:
        await eventually(
            lambda: sum(w.samples for w in third.core.windows.values()) == 200,
            what="the lost batch read again",
        )
        await publish(50)
        await eventually(
            lambda: sum(w.samples for w in third.core.windows.values()) == 250, what="third batch"
        )
        third.core.settings = monitor_settings(consumer_group=settings.consumer_group, window_grace_ms=0)
        closed = await third.ingest.flush(start + 21)
        assert closed == 1
        # Rows of the window that arrive after it closed count for health, and as late, not for drift.
        await publisher.publish(batch_of(model, training_frame(model.rng, 5), at=start + 1))

        async def late_rows():
            status = await drift_status(third, model.name)
            return status.versions[0].windows[0].late_count == 5

        await eventually(late_rows, timeout_s=15, what="the late rows counted")
    rows = await _window_row(database, third.group, model.name)
    ((samples, is_closed, body),) = rows
    assert is_closed and samples == published == 250
    window = monitor_pb2.DriftWindow.FromString(body)
    assert window.sample_count == 250 and window.judged and not window.drifted
    # The predictions copied ahead into the crashed commit's transaction were never kept: each
    # request id is stored once, the late rows' included.
    assert await _stored_predictions(database, model.name) == (255, 255)


async def _refuse_commit(*_, **__):
    raise RuntimeError("the process is gone")


async def _stored_predictions(database, model: str) -> tuple[int, int]:
    """Stored predictions of `model`, and how many distinct request ids they have."""
    async with database.session() as session:
        return tuple(
            (
                await session.exec(
                    text(
                        f"SELECT count(*), count(DISTINCT r.request_id) FROM {SCHEMA}.prediction_requests r "
                        f"JOIN {SCHEMA}.prediction_batches b ON b.id = r.batch_id WHERE b.model = :m"
                    ),
                    params={"m": model},
                )
            ).one()
        )


async def test_a_commit_whose_staged_transaction_broke_is_written_again_with_every_prediction(
    database, store
):
    """Predictions are copied into the next commit's transaction before it commits; when its
    connection dies (PostgreSQL restarted), the commit fails and its retry writes them all, once."""
    await migrate(database, MIGRATIONS, SCHEMA)
    settings = monitor_settings()
    core = MonitorCore(
        database=database,
        outbox=Outbox(SCHEMA, source="mlops-monitor-tests"),
        catalog=None,  # type: ignore[arg-type]  # a commit that closes no window asks the registry nothing
        registry=None,  # type: ignore[arg-type]
        store=store,
        settings=settings,
        consumer_group=inference_group(settings),
    )
    model = f"tests-staged-{uuid.uuid4().hex[:8]}"

    def counted(first: int, n: int) -> CountedBatch:
        now = time.time()
        batch = PredictionBatch.of(
            model=model,
            version=1,
            logged_at=datetime.fromtimestamp(now, UTC),
            request_ids=[f"{model}-{first + i}" for i in range(n)],
            timestamps=np.full(n, now),
            class_labels=CLASSES,
            classes=np.arange(n) % 2,
            predictions=None,
            features=np.zeros((n, len(FEATURES))),
        )
        return CountedBatch(predictions=[batch], rows=n, model=model)

    core.merge(counted(0, 60))
    core.stage()
    staging = core.staging
    assert staging is not None
    session = await staging.session()
    assert staging.copied == 1
    core.merge(counted(60, 40))  # counted after the copy: the commit writes it itself
    raw = await (await session.connection()).get_raw_connection()
    async with database.transaction() as other:
        await other.exec(
            text("SELECT pg_terminate_backend(:pid)"), params={"pid": raw.driver_connection.get_server_pid()}
        )
    plan = core.snapshot()
    with pytest.raises(Exception):  # noqa: B017 - whatever the driver makes of a dead connection
        await core.write(plan)
    assert await _stored_predictions(database, model) == (0, 0)
    await core.write(plan)
    assert await _stored_predictions(database, model) == (100, 100)
