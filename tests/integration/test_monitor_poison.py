"""Records no producer should send, published to the real Kafka with a plain producer: each goes to
its dead-letter topic with a reason that names the problem, and the monitor goes on counting."""

from __future__ import annotations

import math
import time
import uuid

from aiokafka import AIOKafkaProducer
from sqlalchemy import text

from mlops.events.v1 import monitoring_pb2
from mlops.registry.v1 import registry_pb2 as pb
from services.monitor.tables import SCHEMA
from tests.integration import monitor_helpers as base
from tests.integration.bus_helpers import raw_reader
from tests.integration.conftest import TEST_TOPIC_PREFIX, eventually
from tests.integration.monitor_helpers import TOPIC, batch_of, declare_model, header, training_frame

# The monitor wired as its composition root wires it, and the registry, store and publisher it
# uses: the fixtures of the monitor's main integration tests.
monitor, registry, store, publisher = base.monitor, base.registry, base.store, base.publisher

TRUTH_TOPIC = TEST_TOPIC_PREFIX + "mlops.groundtruth.logged"
INFERENCE_TYPE = ("ce_type", b"mlops.inference.logged.v1")


async def _read_cases(reader, cases: set[str], *, timeout_s: float) -> dict[str, object]:
    """DLQ records by their `x-case` header (an original header the DLQ keeps) until all are in."""
    found: dict[str, object] = {}

    async def all_in():
        for records in (await reader.getmany(timeout_ms=200)).values():
            for record in records:
                case = dict(record.headers).get("x-case", b"").decode()
                if case in cases:
                    found[case] = record
        return cases <= found.keys()

    await eventually(
        all_in, timeout_s=timeout_s, interval_s=0, what=f"dead letters {sorted(cases - found.keys())}"
    )
    return found


async def _broken_profile_version(registry, store, model) -> int:
    """A version of `model` whose stored training profile is not JSON (its sha256 is right)."""
    ref = await store.put_bytes(f"models/{model.name}", "profile.json", b"{ this is not a profile")
    v = model.version
    reply = await registry.RegisterModelVersion(
        pb.RegisterModelVersionRequest(
            model=v.model,
            run_id=uuid.uuid4().hex,
            spec_version=v.spec_version,
            dataset=v.dataset,
            dataset_version=v.dataset_version,
            dataset_sha256=v.dataset_sha256,
            artifact_uri=v.artifact_uri,
            artifact_sha256=v.artifact_sha256,
            artifact_size_bytes=v.artifact_size_bytes,
            profile_uri=ref.uri,
            profile_sha256=ref.sha256,
            signature=v.signature,
            metrics=dict(v.metrics),
        )
    )
    return reply.model_version.version


async def test_poison_inference_logs_go_to_the_dlq_with_their_reason_and_ingest_lives(
    monitor, registry, store, publisher, kafka, database
):
    model = await declare_model(registry, store, uuid.uuid4().hex[:10])
    broken = await _broken_profile_version(registry, store, model)

    def good(n: int = 5):
        return batch_of(model, training_frame(model.rng, n), at=time.time())

    far_future = good()
    far_future.records[2].timestamp.seconds = 10**12  # year 33658: what stopped the monitor
    ahead = good()
    ahead.records[0].timestamp.seconds = int(time.time()) + 3600
    before_epoch = good()
    before_epoch.records[1].timestamp.seconds = -5
    nanos = good()
    nanos.records[0].timestamp.nanos = 1_500_000_000
    rate = good()
    rate.sampling_rate = math.nan
    label = good()
    label.class_labels[1] = "yes\0"
    latency = good()
    latency.records[4].latency_us = -3
    unknown = good()
    unknown.model = f"mon-unknown-{uuid.uuid4().hex[:8]}"
    profile = batch_of(model, training_frame(model.rng, 5), version=broken, at=time.time())
    cases = {
        "far-future": (far_future, "record 2", "timestamp seconds=1000000000000"),
        "ahead": (ahead, "record 0", "ahead of the monitor's clock"),
        "before-epoch": (before_epoch, "record 1", "no valid timestamp (seconds=-5"),
        "nanos": (nanos, "record 0", "timestamp.nanos=1500000000"),
        "rate": (rate, "sampling_rate must be in [1e-06, 1], got nan", ""),
        "label": (label, "class_labels[1] ('yes\\x00') has a NUL character", ""),
        "latency": (latency, "record 4", "latency_us=-3"),
        "unknown": (unknown, f"model {unknown.model!r} has no spec in the registry", ""),
        "profile": (profile, f"the training profile of {model.name} v{broken}", "does not parse"),
    }
    # A batch fit to count whose traceparent carries a NUL after a valid context: the window keeps
    # the link in jsonb, which refuses NUL, so a copy of the raw header would fail every commit.
    odd_trace = good(6)
    odd_traceparent = f"01-{uuid.uuid4().hex}-{uuid.uuid4().hex[:16]}-01-\0".encode()

    producer = AIOKafkaProducer(**kafka.client_options())
    await producer.start()
    try:
        async with raw_reader(kafka, TOPIC + ".dlq") as dlq:
            for case, (batch, *_) in cases.items():
                key = batch.model.encode()
                headers = [INFERENCE_TYPE, ("x-case", case.encode())]
                await producer.send_and_wait(TOPIC, batch.SerializeToString(), key=key, headers=headers)
            await producer.send_and_wait(
                TOPIC,
                odd_trace.SerializeToString(),
                key=model.name.encode(),
                headers=[INFERENCE_TYPE, ("traceparent", odd_traceparent)],
            )
            letters = await _read_cases(dlq, set(cases), timeout_s=30)
            after = good(7)
            await producer.send_and_wait(TOPIC, after.SerializeToString(), key=model.name.encode())
    finally:
        await producer.stop()

    for case, (_, *expected) in cases.items():
        reason = header(letters[case], "mlops_dlq_reason")
        assert all(part in reason for part in expected), f"{case}: {reason}"
        assert header(letters[case], "mlops_dlq_consumer") == monitor.group
        assert header(letters[case], "ce_type") == "mlops.inference.logged.v1"  # original headers kept

    async def committed():
        async with database.session() as session:
            total = (
                await session.exec(
                    text(
                        f"SELECT coalesce(sum(sample_count), 0) FROM {SCHEMA}.windows "
                        "WHERE consumer_group = :g AND model = :m"
                    ),
                    params={"g": monitor.group, "m": model.name},
                )
            ).one()[0]
        return total == 6 + 7

    await eventually(committed, timeout_s=20, what="the odd-trace and the later batch committed")


async def test_poison_ground_truth_goes_to_its_dlq_with_the_reason_and_the_next_label_is_stored(
    monitor, registry, store, publisher, kafka, database
):
    model = await declare_model(registry, store, uuid.uuid4().hex[:10])
    future = monitoring_pb2.GroundTruthLogged(model=model.name, request_id="future", label="yes")
    future.observed_at.seconds = 10**12
    cases = {
        "future": (future, ("observed_at", "1000000000000")),
        "nul": (
            monitoring_pb2.GroundTruthLogged(model=model.name, request_id="r\0", label="yes"),
            ("GroundTruthLogged.request_id ('r\\x00') has a NUL character",),
        ),
    }
    fine = monitoring_pb2.GroundTruthLogged(
        model=model.name, request_id=f"fine-{uuid.uuid4().hex}", label="no"
    )
    producer = AIOKafkaProducer(**kafka.client_options())
    await producer.start()
    try:
        async with raw_reader(kafka, TRUTH_TOPIC + ".dlq") as dlq:
            for case, (event, _) in cases.items():
                await producer.send_and_wait(
                    TRUTH_TOPIC,
                    event.SerializeToString(),
                    key=model.name.encode(),
                    headers=[("ce_type", b"mlops.groundtruth.logged.v1"), ("x-case", case.encode())],
                )
            letters = await _read_cases(dlq, set(cases), timeout_s=30)
            await producer.send_and_wait(
                TRUTH_TOPIC,
                fine.SerializeToString(),
                key=model.name.encode(),
                headers=[("ce_type", b"mlops.groundtruth.logged.v1")],
            )
    finally:
        await producer.stop()
    for case, (_, expected) in cases.items():
        reason = header(letters[case], "mlops_dlq_reason")
        assert all(part in reason for part in expected), f"{case}: {reason}"
        # refused at once (by the bus's schema checks or the monitor's), not after retries
        assert header(letters[case], "mlops_dlq_attempts") in ("0", "1")

    async def stored():
        async with database.session() as session:
            return (
                await session.exec(
                    text(f"SELECT count(*) FROM {SCHEMA}.labels WHERE model = :m AND request_id = :r"),
                    params={"m": model.name, "r": fine.request_id},
                )
            ).one()[0] == 1

    await eventually(stored, timeout_s=20, what="the label after the poison ones stored")
