"""R5: a poison corpus on every consumed topic. Each record ends in its dead-letter topic with a reason,
every service keeps running (no restart), and every consumer group's lag comes back to 0."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import uuid

import pytest
from aiokafka import AIOKafkaProducer

from mlops.event_catalog import spec_for_topic
from tests.fault.conftest import (
    CONSUMER_GROUPS,
    all_services_running,
    end_offsets,
    eventually,
    figures,
    group_lag,
    header,
    read_since,
)

PER_TOPIC = 50
HUGE = 900 * 1024  # under the broker's 1 MiB default, so that it reaches the consumers

# topic: (JSON field names that must be strings, the event's key field)
CONSUMED = {
    "mlops.data.committed": (["dataset", "uri", "sha256", "format"], "dataset"),
    "mlops.dataset.recorded": (["dataset", "uri", "sha256", "format"], "dataset"),
    "mlops.drift.detected": (["model"], "model"),
    "mlops.performance.degraded": (["model"], "model"),
    "mlops.retrain.requested": (["model", "reason"], "model"),
    "mlops.model.trained": (["model", "artifact_uri", "artifact_sha256"], "model"),
    "mlops.model.evaluated": (["model", "evaluation_id"], "model"),
    "mlops.inference.logged": (["model", "server_id"], "model"),
    "mlops.groundtruth.logged": (["model", "request_id"], "model"),
}


def absurd_and_unknown(topic: str, rng: random.Random, tag: str) -> list[dict]:
    """Events that decode but name nothing that exists, or carry values no producer of ours makes."""
    ghost = f"poison-{tag}-{rng.randrange(10**9)}"
    far = {"seconds": 10**12}
    if topic == "mlops.data.committed":
        absurd = [
            {
                "dataset": ghost,
                "uri": "s3://mlops/poison.csv",
                "sha256": "a" * 64,
                "format": "csv",
                "committedAt": far,
            },
            {"dataset": ghost, "uri": "ftp://nowhere/x", "sha256": "not-a-sha", "format": "csv"},
            {
                "dataset": ghost,
                "uri": "s3://mlops/x.csv",
                "sha256": "b" * 64,
                "format": "xlsx",
                "rowCount": "-5",
            },
            {"dataset": "x" * 5000, "uri": "s3://mlops/x.csv", "sha256": "c" * 64, "format": "csv"},
            {"dataset": "a\u0000b", "uri": "s3://mlops/x.csv", "sha256": "d" * 64, "format": "csv"},
        ]
        unknown = [
            {
                "dataset": f"{ghost}-{i}",
                "uri": f"s3://mlops/poison/{ghost}-{i}.csv",
                "sha256": f"{i:x}" * 64,
                "format": "csv",
            }
            for i in range(1, 6)
        ]
        return absurd + [dict(e, sha256=e["sha256"][:64]) for e in unknown]
    if topic == "mlops.dataset.recorded":
        absurd = [
            {"dataset": ghost, "version": "-3", "sha256": "a" * 64},
            {"dataset": ghost, "version": "0", "sha256": "a" * 64},
            {"dataset": ghost, "version": "1", "recordedAt": far},
            {"dataset": "x" * 5000, "version": "1"},
            {"dataset": ghost, "version": "1", "retrain": {"model": ghost, "trigger": 99}},
        ]
        unknown = [{"dataset": f"{ghost}-{i}", "version": str(i + 1), "sha256": "b" * 64} for i in range(5)]
        return absurd + unknown
    if topic in ("mlops.drift.detected", "mlops.performance.degraded"):
        absurd = [
            {"model": ghost, "version": "-3"},
            {"model": ghost, "version": "1", "detectedAt": far},
            {"model": "m" * 5000, "version": "1"},
            {"model": "a\u0001b", "version": "1"},
            {"model": "", "version": "1"},
        ]
        unknown = [{"model": f"{ghost}-{i}", "version": str(i)} for i in range(5)]
        return absurd + unknown
    if topic == "mlops.retrain.requested":
        absurd = [
            {"model": ghost, "version": "-1", "reason": "x"},
            {"model": ghost, "datasetVersion": "-7", "reason": "x"},
            {"model": ghost, "requestedAt": far, "reason": "x"},
            {"model": "m" * 5000, "reason": "x"},
            {"model": "", "reason": "x"},
        ]
        unknown = [{"model": f"{ghost}-{i}", "version": str(i + 1), "reason": "poison"} for i in range(5)]
        return absurd + unknown
    if topic == "mlops.model.trained":
        absurd = [
            {"model": ghost, "version": "-2", "artifactUri": "s3://mlops/x.onnx", "artifactSha256": "e" * 64},
            {"model": ghost, "version": "1", "artifactSha256": "zz"},
            {"model": ghost, "version": "1", "trainedAt": far},
            {"model": ghost, "version": "1", "metrics": {"accuracy": "Infinity"}},
            {"model": "", "version": "1"},
        ]
        unknown = [
            {
                "model": f"{ghost}-{i}",
                "version": str(i + 1),
                "artifactUri": "s3://mlops/none.onnx",
                "artifactSha256": "f" * 64,
            }
            for i in range(5)
        ]
        return absurd + unknown
    if topic == "mlops.model.evaluated":
        absurd = [
            {"model": ghost, "version": "-4", "passed": True},
            {"model": ghost, "version": "1", "passed": True, "evaluatedAt": far},
            {"model": ghost, "version": "1", "passed": True, "metrics": {"accuracy": "-Infinity"}},
            {"model": "m" * 5000, "version": "1", "passed": True},
            {"model": "", "version": "1", "passed": True},
        ]
        unknown = [
            {
                "model": f"{ghost}-{i}",
                "version": str(i + 1),
                "passed": True,
                "evaluationId": str(uuid.uuid4()),
            }
            for i in range(5)
        ]
        return absurd + unknown
    if topic == "mlops.inference.logged":
        absurd = [
            {"model": ghost, "records": [{"requestId": "r", "version": "1", "timestamp": far}]},
            {"model": ghost, "records": [{"requestId": "r", "version": "-1"}]},
            {"model": ghost, "records": [{"requestId": "r\u0000", "version": "1", "features": [1, 2]}]},
            {"model": "m" * 5000, "records": [{"requestId": "r", "version": "1"}]},
            {"model": "", "records": [{"requestId": "r", "version": "1"}]},
        ]
        unknown = [
            {
                "model": f"{ghost}-{i}",
                "records": [{"requestId": f"r{i}", "version": str(i + 1), "features": [1.0]}],
            }
            for i in range(5)
        ]
        return absurd + unknown
    if topic == "mlops.groundtruth.logged":
        absurd = [
            {"model": ghost, "requestId": "r", "label": "1", "loggedAt": far},
            {"model": "m" * 5000, "requestId": "r", "label": "1"},
            {"model": "a\u0002", "requestId": "r", "label": "1"},
            {"model": "", "requestId": "r", "label": "1"},
            {"model": ghost, "requestId": "", "label": ""},
        ]
        unknown = [{"model": f"{ghost}-{i}", "requestId": f"r{i}", "label": "1"} for i in range(5)]
        return absurd + unknown
    raise AssertionError(topic)


def corpus(
    topic: str, rng: random.Random, tag: str
) -> list[tuple[bytes | None, bytes, list[tuple[str, bytes]]]]:
    """At least PER_TOPIC (key, value, headers) records, every one of them unusable."""
    spec = spec_for_topic(topic)
    assert spec is not None, topic
    strings, key_field = CONSUMED[topic]
    records: list[tuple[bytes | None, bytes, list[tuple[str, bytes]]]] = []

    def add(
        value: bytes, *, content_type: str = "application/json", ce_type: str | None = spec.ce_type, key=None
    ):
        headers = [
            ("ce_specversion", b"1.0"),
            ("ce_id", f"poison-{tag}-{len(records)}".encode()),
            ("ce_source", b"fault-tests"),
            ("content-type", content_type.encode()),
        ]
        if ce_type is not None:
            headers.append(("ce_type", ce_type.encode()))
        records.append((key or f"poison-{tag}".encode(), value, headers))

    for _ in range(8):  # bad encoding: bytes that are not the message
        add(bytes([0xFF, 0xFF]) + rng.randbytes(rng.randrange(4, 200)), content_type="application/protobuf")
    for text in ("{", "not json", "[1, 2", '{"a":}', "\udcff"):
        add(text.encode(errors="surrogateescape"))
    for field in (strings * 5)[:5]:  # wrong types
        add(json.dumps({field: rng.choice([123, [1, 2], {"x": 1}, True])}).encode())
    for _ in range(3):  # nothing at all
        add(b"{}")
    for _ in range(2):
        add(b"", content_type="application/protobuf")
    for event in absurd_and_unknown(topic, rng, tag):
        add(json.dumps(event).encode())
    for _ in range(2):  # huge
        add(json.dumps({key_field: "h" * HUGE}).encode())
    other = (
        "mlops.model.deployed.v1" if spec.ce_type != "mlops.model.deployed.v1" else "mlops.data.committed.v1"
    )
    add(json.dumps({key_field: "x"}).encode(), ce_type=other)  # another event's type on this topic
    add(json.dumps({key_field: "x"}).encode(), ce_type=None)  # no type at all
    add(json.dumps({key_field: "x"}).encode(), content_type="text/plain")
    add(json.dumps({key_field: "x"}).encode(), ce_type="mlops.no.such.event.v1")
    add(json.dumps({key_field: "x", "unknownField": 1}).encode())
    while len(records) < PER_TOPIC:
        add(
            rng.randbytes(rng.randrange(1, 64)),
            content_type=rng.choice(["application/protobuf", "application/json"]),
        )
    return records


@pytest.mark.timeout(900)
async def test_a_poison_corpus_ends_in_the_dead_letter_topics_and_nothing_stops(kafka_settings, unique):
    restarts_before = all_services_running()
    rng = random.Random(1234)
    dlqs = [f"{topic}.dlq" for topic in CONSUMED]
    start = await end_offsets(kafka_settings, dlqs)

    producer = AIOKafkaProducer(**kafka_settings.client_options(), max_request_size=2 * 1024 * 1024)
    await producer.start()
    sent: dict[tuple[str, int, int], str] = {}
    try:
        for topic in CONSUMED:
            for key, value, headers in corpus(topic, rng, f"{unique}-{topic.split('.')[1]}"):
                meta = await producer.send_and_wait(topic, value, key=key, headers=headers)
                sent[(topic, meta.partition, meta.offset)] = dict(headers)["ce_id"].decode()
    finally:
        await producer.stop()
    per_topic = {topic: sum(1 for t, _, _ in sent if t == topic) for topic in CONSUMED}
    assert all(count >= PER_TOPIC for count in per_topic.values()), per_topic

    groups = sorted({group for names in CONSUMER_GROUPS.values() for group in names})
    loop = asyncio.get_running_loop()
    started = loop.time()

    async def drained() -> bool:
        return all([await group_lag(kafka_settings, group) == 0 for group in groups])

    deadline = started + 600
    while not await drained():
        assert loop.time() < deadline, {g: await group_lag(kafka_settings, g) for g in groups}
        await asyncio.sleep(1)
    drained_s = loop.time() - started

    # Every poison record has a dead letter, from at least one of its topic's consumers, with a reason.
    found: dict[tuple[str, int, int], str] = {}

    async def all_dead_lettered() -> bool:
        for record in await read_since(kafka_settings, start, timeout_s=10):
            origin = (
                header(record, "mlops_dlq_topic"),
                header(record, "mlops_dlq_partition"),
                header(record, "mlops_dlq_offset"),
            )
            if None in origin:
                continue
            found[(origin[0], int(origin[1]), int(origin[2]))] = header(record, "mlops_dlq_reason") or ""
        return all(where in found for where in sent)

    with contextlib.suppress(AssertionError):  # what is missing is named below
        await eventually(all_dead_lettered, timeout_s=120, interval_s=1, what="every dead letter")
    missing = sorted({(t, sent[(t, p, o)]) for (t, p, o) in sent if (t, p, o) not in found})
    figures(
        "R5 poison corpus",
        records=len(sent),
        per_topic=min(per_topic.values()),
        dead_lettered=len(sent) - len(missing),
        missing=len(missing),
        drained_s=round(drained_s, 1),
    )
    assert not missing, f"{len(missing)} poison records never reached a dead-letter topic: {missing[:20]}"
    empty = [where for where in sent if not found[where].strip()]
    assert not empty, f"dead letters without a reason: {empty[:10]}"
    assert all_services_running() == restarts_before, "a service restarted while eating the poison corpus"
