"""The event bus's outbox and inbox against the real Kafka and PostgreSQL of the local stack: no event
lost to a crash between commit and publish, a refused row dead-lettered, rows rolled back with their
transaction, publishes in a batch awaited together, old inbox ids pruned."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import pytest
from sqlalchemy import text

from mlops.bus import Inbox, OutboxRelay
from mlops.bus.producer import deferred_deliveries
from mlops.event_catalog import DLQ_SUFFIX
from mlops.events.v1 import data_pb2
from mlops.outbox import Outbox
from tests.integration.bus_helpers import (
    SCHEMA,
    TOPIC,
    committed,
    make_consumer,
    migrated,
    publisher,
    raw_reader,
    read_until,
    running,
)
from tests.integration.conftest import TEST_TOPIC_PREFIX, eventually

CRASHING_WRITER = """
import asyncio, os, sys
from sqlalchemy import text
from mlops.outbox import Outbox
from mlops.db import Database
from mlops.events.v1 import data_pb2
from mlops.settings import DatabaseSettings

async def main():
    database = Database(DatabaseSettings())
    outbox = Outbox("bustest", source="mlops-crasher", topic_prefix=sys.argv[2])
    async with database.transaction() as session:
        await session.exec(text('INSERT INTO bustest.handled (event_id, marker) VALUES (:m, :m)'), params={"m": sys.argv[1]})
        event_id = await outbox.add(session, data_pb2.DataCommitted(dataset=sys.argv[1], uri="file:///x", sha256="c" * 64, format="csv"))
    print(event_id, flush=True)
    os._exit(17)  # dies after the commit, before anything could publish

asyncio.run(main())
"""


async def test_a_crash_between_commit_and_publish_loses_no_event(kafka, bus, database, unique):
    await migrated(database)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", CRASHING_WRITER, unique, TEST_TOPIC_PREFIX],
        capture_output=True,
        text=True,
        env=env,
    )
    assert result.returncode == 17, result.stderr
    event_id = result.stdout.strip()

    async with publisher(kafka, bus, source="mlops-relay") as pub, raw_reader(kafka, TOPIC) as reader:
        relay = OutboxRelay(database, SCHEMA, pub, bus)
        task = asyncio.create_task(relay.run())
        try:
            record = await read_until(reader, lambda r: dict(r.headers).get("ce_id") == event_id.encode())
        finally:
            await relay.stop()
            await task
    headers = dict(record.headers)
    assert headers["ce_source"] == b"mlops-crasher", (
        "the event keeps the envelope written with the state change"
    )
    event = data_pb2.DataCommitted()
    event.ParseFromString(record.value)
    assert event.dataset == unique
    async with database.session() as session:
        left = await session.exec(text(f'SELECT count(*) FROM "{SCHEMA}".outbox'))
        assert left.scalar_one() == 0, "relayed rows leave the outbox"


async def test_an_outbox_row_kafka_refuses_is_dead_lettered_and_the_rows_after_it_are_relayed(
    kafka, bus, database, unique
):
    await migrated(database)
    outbox = Outbox(SCHEMA, source="mlops-tests", topic_prefix=TEST_TOPIC_PREFIX)
    # 2 MiB of labels: over the producer's max_request_size (1 MiB), so Kafka never takes it.
    big = committed(unique + "-big", labels={"blob": "x" * (2 << 20)})
    async with database.transaction() as session:
        big_id = await outbox.add(session, big)
        small_id = await outbox.add(session, committed(unique + "-small"))

    async with (
        publisher(kafka, bus, source="mlops-relay") as pub,
        raw_reader(kafka, TOPIC) as reader,
        raw_reader(kafka, TOPIC + DLQ_SUFFIX) as dlq,
    ):
        relay = OutboxRelay(database, SCHEMA, pub, bus)
        task = asyncio.create_task(relay.run())
        try:
            await read_until(reader, lambda r: dict(r.headers).get("ce_id") == small_id.encode())
            dead = await read_until(dlq, lambda r: dict(r.headers).get("ce_id") == big_id.encode())
        finally:
            await relay.stop()
            await task
    headers = {name: value.decode() for name, value in dead.headers}
    assert "max_request_size" in headers["mlops_dlq_reason"], headers["mlops_dlq_reason"]
    assert headers["mlops_dlq_topic"] == TOPIC
    assert headers["ce_source"] == "mlops-tests", "the original headers travel with the dead letter"
    assert dead.key == (unique + "-big").encode()
    async with database.session() as session:
        left = await session.exec(
            text(f'SELECT count(*) FROM "{SCHEMA}".outbox WHERE key IN (:big, :small)'),
            params={"big": (unique + "-big").encode(), "small": (unique + "-small").encode()},
        )
        assert left.scalar_one() == 0, "neither row is left in the outbox"


async def test_outbox_rows_roll_back_with_their_transaction(database, unique):
    await migrated(database)
    outbox = Outbox(SCHEMA, source="mlops-tests", topic_prefix=TEST_TOPIC_PREFIX)
    with pytest.raises(RuntimeError, match="the state change failed"):
        async with database.transaction() as session:
            await outbox.add(session, committed(unique))
            raise RuntimeError("the state change failed")
    async with database.session() as session:
        rows = await session.exec(
            text(f'SELECT count(*) FROM "{SCHEMA}".outbox WHERE key = :k'), params={"k": unique.encode()}
        )
        assert rows.scalar_one() == 0


async def test_publishes_inside_a_batch_are_awaited_together(kafka, bus, unique):
    async with publisher(kafka, bus) as pub, raw_reader(kafka, TOPIC) as reader:
        with deferred_deliveries() as pending:
            for index in range(20):
                await pub.publish(committed(f"{unique}-{index}"))
        assert len(pending) == 20
        await asyncio.gather(*pending)
        await read_until(reader, lambda r: r.key == f"{unique}-19".encode())


async def test_inbox_prune_forgets_only_old_ids(database, unique):
    from datetime import timedelta

    await migrated(database)
    inbox = Inbox(SCHEMA)
    async with database.transaction() as session:
        assert await inbox.claim(session, consumer=unique, event_id="old")
        assert await inbox.claim(session, consumer=unique, event_id="new")
        assert not await inbox.claim(session, consumer=unique, event_id="new")
        await session.exec(
            text(
                f"UPDATE \"{SCHEMA}\".inbox SET handled_at = now() - interval '10 days' "
                "WHERE consumer = :c AND event_id = 'old'"
            ),
            params={"c": unique},
        )
    assert await inbox.prune(database, timedelta(days=7)) >= 1
    async with database.session() as session:
        left = await session.exec(
            text(f'SELECT event_id FROM "{SCHEMA}".inbox WHERE consumer = :c'), params={"c": unique}
        )
        assert [row[0] for row in left] == ["new"]


async def test_a_running_consumer_prunes_old_inbox_ids(kafka, bus, database, unique):
    await migrated(database)
    async with database.transaction() as session:
        await session.exec(
            text(
                f'INSERT INTO "{SCHEMA}".inbox (consumer, event_id, handled_at) '
                "VALUES (:c, 'old', now() - interval '10 days'), (:c, 'new', now())"
            ),
            params={"c": unique},
        )

    async def handle(event, ctx):
        return None

    async def left():
        async with database.session() as session:
            rows = await session.exec(
                text(f'SELECT event_id FROM "{SCHEMA}".inbox WHERE consumer = :c'), params={"c": unique}
            )
            return [row[0] for row in rows]

    async with publisher(kafka, bus) as pub:
        consumer = make_consumer(kafka, bus, pub, database)
        consumer.subscribe(data_pb2.DataCommitted, handle)
        async with running(consumer):
            await eventually(lambda: _equals(left, ["new"]), what="the old inbox id pruned")


async def _equals(rows, expected):
    return await rows() == expected
