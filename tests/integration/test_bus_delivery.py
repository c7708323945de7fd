"""The event bus against the real Kafka, PostgreSQL and Jaeger of the local stack: what a consumer
receives (every envelope header, JSON from a plain producer, one trace across producer and consumer),
redeliveries handled once, poison messages and failing handlers dead-lettered."""

from __future__ import annotations

import json
import uuid

from aiokafka import AIOKafkaProducer
from cloudevents.core.bindings.kafka import KafkaMessage, from_binary_event
from sqlalchemy import text

from mlops.event_catalog import DLQ_SUFFIX
from mlops.events.v1 import data_pb2
from tests.integration.bus_helpers import (
    LOGICAL_TOPIC,
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
from tests.integration.conftest import eventually, jaeger_trace


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
