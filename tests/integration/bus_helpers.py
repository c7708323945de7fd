"""Helpers shared by the bus tests: a consumer that records what it handled, raw Kafka reads, the topic
of DataCommitted (under the tests' prefix) and an event to publish on it."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

from aiokafka import AIOKafkaConsumer

from mlops.bus import EventConsumer, EventPublisher, Inbox, ensure_topics, partitions_of
from mlops.db import Database, migrate
from mlops.event_catalog import spec_for
from mlops.events.v1 import data_pb2
from mlops.settings import BusSettings
from tests.integration.conftest import TEST_TOPIC_PREFIX

MIGRATIONS = Path(__file__).parent / "fixtures" / "migrations"
SCHEMA = "bustest"


async def migrated(database: Database) -> Database:
    await migrate(database, MIGRATIONS, SCHEMA)
    return database


@contextlib.asynccontextmanager
async def running(consumer: EventConsumer) -> AsyncIterator[EventConsumer]:
    """Start a consumer, wait until its partitions are assigned, run it, and stop it afterwards."""
    await consumer.start()
    await consumer.wait_assigned()
    task = asyncio.create_task(consumer.run())
    try:
        yield consumer
    finally:
        await consumer.stop()
        await task


@contextlib.asynccontextmanager
async def publisher(kafka, bus, source: str = "mlops-tests") -> AsyncIterator[EventPublisher]:
    pub = EventPublisher(kafka, bus, source=source)
    await pub.start()
    try:
        yield pub
    finally:
        await pub.stop()


def make_consumer(kafka, bus, pub, database=None, *, group: str | None = None) -> EventConsumer:
    return EventConsumer(
        kafka,
        bus,
        group_id=group or f"tests-{uuid.uuid4().hex[:8]}",
        publisher=pub,
        database=database,
        inbox=Inbox(SCHEMA) if database is not None else None,
        from_end=True,
    )


@contextlib.asynccontextmanager
async def raw_reader(kafka, topic: str) -> AsyncIterator[AIOKafkaConsumer]:
    """A plain aiokafka consumer positioned at the end of `topic` (for reading DLQs and relays)."""
    await ensure_topics(kafka, BusSettings(), [topic])  # prefix already in `topic`
    reader = AIOKafkaConsumer(**kafka.client_options(), group_id=None, enable_auto_commit=False)
    await reader.start()
    try:
        partitions = await partitions_of(kafka, topic)
        reader.assign(partitions)
        await reader.seek_to_end(*partitions)
        for tp in partitions:
            await reader.position(tp)
        yield reader
    finally:
        await reader.stop()


async def read_until(reader: AIOKafkaConsumer, predicate, *, timeout_s: float = 20.0):
    """Records from `reader` until one satisfies `predicate`; that record is returned."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while loop.time() < deadline:
        batch = await reader.getmany(timeout_ms=200)
        for records in batch.values():
            for record in records:
                if predicate(record):
                    return record
    raise AssertionError(f"no matching record within {timeout_s}s")


LOGICAL_TOPIC = spec_for(data_pb2.DataCommitted).topic
TOPIC = TEST_TOPIC_PREFIX + LOGICAL_TOPIC


def committed(dataset: str, **extra) -> data_pb2.DataCommitted:
    return data_pb2.DataCommitted(
        dataset=dataset,
        uri=f"s3://mlops/datasets/{dataset}/{'a' * 64}/data.csv",
        sha256="a" * 64,
        format="csv",
        committed_by="tests",
        row_count=178,
        **extra,
    )
