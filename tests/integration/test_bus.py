"""The event bus against the real Kafka, PostgreSQL and Jaeger of the local stack."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import uuid

import pytest
from aiokafka import AIOKafkaProducer
from cloudevents.core.bindings.kafka import KafkaMessage, from_binary_event
from sqlalchemy import text

from mlops.bus import Inbox, OutboxRelay
from mlops.bus.producer import deferred_deliveries
from mlops.event_catalog import DLQ_SUFFIX, spec_for
from mlops.events.v1 import data_pb2
from mlops.outbox import Outbox
from tests.integration.bus_helpers import (
    SCHEMA,
    make_consumer,
    migrated,
    publisher,
    raw_reader,
    read_until,
    running,
)
from tests.integration.conftest import TEST_TOPIC_PREFIX, eventually, jaeger_trace

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


async def test_protobuf_event_arrives_with_every_envelope_header(kafka, bus, unique, telemetry):
    seen = []

    async def handle(event, ctx):
        if event.dataset == unique:
            seen.append((event, ctx))

    async with publisher(kafka, bus, source="mlops-tests") as pub:
        consumer = make_consumer(kafka, bus, pub)
        consumer.subscribe(data_pb2.DataCommitted, handle, idempotent=False)
        async with raw_reader(kafka, TOPIC) as reader, running(consumer):
            await pub.publish(committed(unique))
            raw = await read_until(reader, lambda r: r.key == unique.encode())
            await eventually(lambda: seen, what="event handled")

    event, ctx = seen[0]
    assert event == committed(unique)
    env = ctx.envelope
    assert env.specversion == "1.0"
    assert env.source == "mlops-tests"
    assert env.type == "mlops.data.committed.v1"
    assert env.content_type == "application/protobuf"
    assert env.subject == unique
    uuid.UUID(env.id)
    assert env.time.endswith("Z")
    assert ctx.key == unique

    headers = dict(raw.headers)
    names = [name for name, _ in raw.headers]
    assert names.count("traceparent") == 1, names
    for name in ("ce_specversion", "ce_id", "ce_source", "ce_type", "ce_time", "content-type", "traceparent"):
        assert name in headers, f"missing header {name}"
    assert headers["ce_id"].decode() == env.id
    # The CloudEvents SDK reads the very same record as a valid binary-mode event.
    cloud_event = from_binary_event(KafkaMessage(headers=headers, key=raw.key, value=raw.value))
    assert cloud_event.get_id() == env.id
    assert cloud_event.get_type() == "mlops.data.committed.v1"
    assert cloud_event.get_source() == "mlops-tests"
    parsed = data_pb2.DataCommitted()
    parsed.ParseFromString(cloud_event.get_data())
    assert parsed.dataset == unique


async def test_json_from_a_plain_kafka_producer_is_accepted_and_missing_headers_are_filled(
    kafka, bus, unique
):
    seen = []

    async def handle(event, ctx):
        if event.dataset == unique:
            seen.append((event, ctx))

    body = {
        "dataset": unique,
        "uri": f"file:///data/{unique}.csv",
        "sha256": "b" * 64,
        "format": "csv",
        "rowCount": "42",
        "labels": {"team": "upstream"},
    }
    plain = AIOKafkaProducer(**kafka.client_options())
    await plain.start()
    try:
        async with publisher(kafka, bus) as pub:
            consumer = make_consumer(kafka, bus, pub)
            consumer.subscribe(data_pb2.DataCommitted, handle, idempotent=False)
            async with running(consumer):
                await plain.send_and_wait(
                    TOPIC,
                    json.dumps(body).encode(),
                    key=unique.encode(),
                    headers=[("content-type", b"application/json"), ("ce_type", b"mlops.data.committed.v1")],
                )
                await eventually(lambda: seen, what="JSON event handled")
    finally:
        await plain.stop()

    event, ctx = seen[0]
    assert event.dataset == unique and event.row_count == 42 and event.labels["team"] == "upstream"
    assert ctx.envelope.content_type == "application/json"
    assert ctx.envelope.id.startswith(f"{LOGICAL_TOPIC}/{ctx.partition}/{ctx.offset}/"), (
        "a stable id is derived when ce_id is missing"
    )
    assert ctx.envelope.source == "urn:mlops:upstream"
    assert ctx.envelope.specversion == "1.0"


async def test_producer_and_consumer_spans_share_one_trace_in_jaeger(
    kafka, bus, unique, telemetry, jaeger_url
):
    trace_ids = []

    async def handle(event, ctx):
        if event.dataset == unique:
            trace_ids.append(ctx.envelope.traceparent.split("-")[1])

    async with publisher(kafka, bus) as pub:
        consumer = make_consumer(kafka, bus, pub)
        consumer.subscribe(data_pb2.DataCommitted, handle, idempotent=False)
        async with running(consumer):
            await pub.publish(committed(unique))
            await eventually(lambda: trace_ids, what="event handled")
    telemetry.provider.force_flush()

    trace_id = trace_ids[0]

    def both_spans():
        spans = jaeger_trace(jaeger_url, trace_id)
        names = {span.name: span for span in spans}
        return names if {f"publish {TOPIC}", f"process {TOPIC}"} <= set(names) else None

    names = await eventually(both_spans, timeout_s=30, what="both spans in Jaeger")
    producer, consumer_span = names[f"publish {TOPIC}"], names[f"process {TOPIC}"]
    assert producer.trace_id == consumer_span.trace_id == trace_id
    assert consumer_span.parent_id == producer.span_id, "the CONSUMER span continues the PRODUCER span"
    assert (producer.kind, consumer_span.kind) == ("producer", "consumer")
    assert consumer_span.attributes["messaging.system"] == "kafka"
    assert consumer_span.attributes["messaging.destination.name"] == TOPIC
    assert consumer_span.attributes["messaging.consumer.group.name"].startswith("tests-")
    assert producer.service == consumer_span.service == "mlops-tests"


async def test_a_redelivered_event_is_handled_once(kafka, bus, database, unique):
    await migrated(database)

    async def handle(event, ctx):
        await ctx.session.exec(
            text(f'INSERT INTO "{SCHEMA}".handled (event_id, marker) VALUES (:id, :marker)'),
            params={"id": ctx.envelope.id, "marker": event.dataset},
        )

    event_id = str(uuid.uuid4())
    group = f"tests-once-{unique}"
    async with publisher(kafka, bus) as pub:
        consumer = make_consumer(kafka, bus, pub, database, group=group)
        consumer.subscribe(data_pb2.DataCommitted, handle)
        async with running(consumer):
            # The same event twice, as Kafka redelivers after a crash before the offset commit.
            await pub.publish(committed(unique), event_id=event_id)
            await pub.publish(committed(unique), event_id=event_id)
            marker = committed(unique + "-after").dataset
            await pub.publish(committed(marker))

            async def rows():
                async with database.session() as session:
                    result = await session.exec(
                        text(f'SELECT marker FROM "{SCHEMA}".handled WHERE marker IN (:a, :b)'),
                        params={"a": unique, "b": marker},
                    )
                    return [row[0] for row in result]

            found = await eventually(lambda: _has(rows, marker), what="the event after the duplicate handled")
    assert sorted(found) == sorted([unique, marker]), found
    async with database.session() as session:
        claimed = await session.exec(
            text(f'SELECT count(*) FROM "{SCHEMA}".inbox WHERE consumer = :c AND event_id = :e'),
            params={"c": group, "e": event_id},
        )
        assert claimed.scalar_one() == 1


async def _has(rows, marker):
    found = await rows()
    return found if marker in found else None


async def test_a_poison_message_goes_to_the_dlq_with_its_reason_and_the_consumer_goes_on(kafka, bus, unique):
    seen = []

    async def handle(event, ctx):
        seen.append(event.dataset)

    plain = AIOKafkaProducer(**kafka.client_options())
    await plain.start()
    try:
        async with publisher(kafka, bus) as pub:
            consumer = make_consumer(kafka, bus, pub)
            consumer.subscribe(data_pb2.DataCommitted, handle, idempotent=False)
            async with raw_reader(kafka, TOPIC + DLQ_SUFFIX) as dlq, running(consumer):
                poison_headers = [
                    ("content-type", b"application/protobuf"),
                    ("ce_type", b"mlops.data.committed.v1"),
                    ("ce_id", unique.encode()),
                    ("x-origin", b"upstream-system"),
                ]
                await plain.send_and_wait(
                    TOPIC, b"\xff\xfe not protobuf", key=unique.encode(), headers=poison_headers
                )
                await pub.publish(committed(unique))
                dead = await read_until(dlq, lambda r: dict(r.headers).get("ce_id") == unique.encode())
                await eventually(lambda: unique in seen, what="the good event after the poison one handled")
    finally:
        await plain.stop()

    headers = {name: value.decode() for name, value in dead.headers}
    assert "does not parse as DataCommitted" in headers["mlops_dlq_reason"]
    assert headers["mlops_dlq_topic"] == TOPIC
    assert headers["mlops_dlq_error_type"] == "MalformedEvent"
    assert headers["x-origin"] == "upstream-system", "original headers travel with the dead letter"
    assert dead.value == b"\xff\xfe not protobuf" and dead.key == unique.encode()


async def test_a_handler_that_keeps_failing_is_retried_then_dead_lettered(kafka, bus, unique):
    attempts = []

    async def handle(event, ctx):
        if event.dataset == unique:
            attempts.append(ctx.attempt)
            raise RuntimeError("the feature store is down")

    async with publisher(kafka, bus) as pub:
        consumer = make_consumer(kafka, bus, pub)
        consumer.subscribe(data_pb2.DataCommitted, handle, idempotent=False)
        async with raw_reader(kafka, TOPIC + DLQ_SUFFIX) as dlq, running(consumer):
            await pub.publish(committed(unique))
            dead = await read_until(dlq, lambda r: r.key == unique.encode())
    headers = {name: value.decode() for name, value in dead.headers}
    assert attempts == [1, 2, 3]
    assert headers["mlops_dlq_attempts"] == "3"
    assert headers["mlops_dlq_reason"] == "RuntimeError: the feature store is down"


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
