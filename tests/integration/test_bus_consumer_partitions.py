"""The event bus's consumer and its partitions against the real Kafka and PostgreSQL of the local stack:
a stuck partition holds up no other, a recreated topic's reused positions, records waiting while a
consumer joins its group."""

from __future__ import annotations

import asyncio
import contextlib
import json

from aiokafka import AIOKafkaProducer
from sqlalchemy import text

from mlops.event_catalog import DLQ_SUFFIX
from mlops.events.v1 import data_pb2
from tests.integration.bus_helpers import (
    LOGICAL_TOPIC,
    SCHEMA,
    committed,
    make_consumer,
    migrated,
    publisher,
    running,
)
from tests.integration.conftest import eventually


async def test_a_stuck_partition_does_not_hold_up_the_others(kafka, bus, unique):
    release = asyncio.Event()
    stuck_partition: list[int] = []
    handled: list[tuple[str, int]] = []

    async def handle(event, ctx):
        if not event.dataset.startswith(unique):
            return
        if event.dataset == f"{unique}-stuck":
            stuck_partition.append(ctx.partition)
            await release.wait()
        handled.append((event.dataset, ctx.partition))

    async with publisher(kafka, bus) as pub:
        consumer = make_consumer(kafka, bus, pub)
        consumer.subscribe(data_pb2.DataCommitted, handle, idempotent=False)
        async with running(consumer):
            try:
                await pub.publish(committed(f"{unique}-stuck"))
                await eventually(lambda: stuck_partition, what="the stuck record in hand")
                # Keys spread over every partition: some land beside the stuck one, most elsewhere.
                for index in range(12):
                    await pub.publish(committed(f"{unique}-{index}"))

                def others():
                    return [name for name, partition in handled if partition != stuck_partition[0]]

                await eventually(
                    lambda: len(others()) >= 1 and all(p != stuck_partition[0] for _, p in handled),
                    timeout_s=10,
                    what="records of the other partitions handled while one partition is stuck",
                )
                assert not any(p == stuck_partition[0] for _, p in handled), "the stuck partition kept order"
            finally:
                release.set()
            await eventually(lambda: f"{unique}-stuck" in [name for name, _ in handled], what="the stuck one")
    behind = [name for name, p in handled if p == stuck_partition[0]]
    assert behind[0] == f"{unique}-stuck", (
        "records behind the stuck one wait for it: one partition, one order"
    )


async def test_a_record_without_ce_id_at_a_reused_position_of_a_recreated_topic_is_handled(
    kafka, bus, database, unique
):
    from aiokafka.admin import AIOKafkaAdminClient

    from mlops.bus import ensure_topics, partitions_of

    await migrated(database)
    own_bus = bus.model_copy(update={"topic_prefix": f"tests.recreated.{unique}."})
    topic = own_bus.topic_prefix + LOGICAL_TOPIC
    group = f"tests-recreated-{unique}"
    positions: list[tuple[str, int, int]] = []

    async def handle(event, ctx):
        positions.append((event.dataset, ctx.partition, ctx.offset))
        await ctx.session.exec(
            text(f'INSERT INTO "{SCHEMA}".handled (event_id, marker) VALUES (:id, :marker)'),
            params={"id": ctx.envelope.id, "marker": event.dataset},
        )

    async def send_without_ce_id(dataset: str) -> None:
        plain = AIOKafkaProducer(**kafka.client_options())
        await plain.start()
        try:
            body = {"dataset": dataset, "uri": "file:///x.csv", "sha256": "d" * 64, "format": "csv"}
            await plain.send_and_wait(
                topic,
                json.dumps(body).encode(),
                key=b"same-key",
                partition=0,
                headers=[("content-type", b"application/json")],
            )
        finally:
            await plain.stop()

    async def consume(dataset: str) -> None:
        async with publisher(kafka, own_bus) as pub:
            consumer = make_consumer(kafka, own_bus, pub, database, group=group)
            consumer.subscribe(data_pb2.DataCommitted, handle)
            async with running(consumer):
                await send_without_ce_id(dataset)
                await eventually(
                    lambda: dataset in [name for name, *_ in positions], what=f"{dataset} handled"
                )

    admin = AIOKafkaAdminClient(**kafka.client_options())
    await admin.start()
    try:
        await consume(f"{unique}-before")
        await admin.delete_topics([topic])
        await eventually(lambda: _gone(admin, topic), what="the topic deleted")

        async def recreated():
            await ensure_topics(kafka, own_bus, [topic])
            return len(await partitions_of(kafka, topic)) == own_bus.topic_partitions

        await eventually(recreated, what="the topic created again")
        await consume(f"{unique}-after")
    finally:
        with contextlib.suppress(Exception):
            await admin.delete_topics([topic, topic + DLQ_SUFFIX])
        await admin.close()
    (_, *first), (_, *second) = positions
    assert first == second == [0, 0], "both records sat at partition 0, offset 0 of their topic"
    async with database.session() as session:
        markers = await session.exec(
            text(f'SELECT marker FROM "{SCHEMA}".handled WHERE marker LIKE :m'), params={"m": f"{unique}-%"}
        )
        assert sorted(row[0] for row in markers) == [f"{unique}-after", f"{unique}-before"]


async def _gone(admin, topic: str) -> bool:
    return topic not in await admin.list_topics()


async def test_records_waiting_when_a_consumer_joins_are_all_handled(kafka, bus, unique):
    """A service runs its consumer as soon as it starts, while the group is still being joined: a
    batch fetched across that join must not be lost (it was, once: dropped, with the position past it)."""
    from mlops.bus import EventConsumer

    own_bus = bus.model_copy(update={"topic_prefix": f"tests.joining.{unique}."})
    handled: list[str] = []

    async def handle(event, ctx):
        handled.append(event.dataset)

    async with publisher(kafka, own_bus) as pub:
        names = [f"{unique}-{index}" for index in range(12)]
        for name in names:
            await pub.publish(committed(name))
        for attempt in range(3):  # a fresh group each time: the join's timing varies
            handled.clear()
            consumer = EventConsumer(
                kafka, own_bus, group_id=f"tests-joining-{unique}-{attempt}", publisher=pub, database=None
            )
            consumer.subscribe(data_pb2.DataCommitted, handle, idempotent=False)
            await consumer.start()
            task = asyncio.create_task(consumer.run())  # no wait for the assignment, as services run
            try:
                await eventually(
                    lambda: sorted(handled) == sorted(names),
                    timeout_s=30,
                    what=f"all 12 waiting records handled (attempt {attempt}, got {len(handled)})",
                )
            finally:
                await consumer.stop()
                await task
