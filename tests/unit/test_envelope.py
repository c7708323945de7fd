"""Envelope encoding and decoding: pure logic, no Kafka."""

from __future__ import annotations

import json

import pytest

from mlops.envelope import JSON, MalformedEvent, decode, encode
from mlops.event_catalog import spec_for
from mlops.events.v1 import data_pb2

EVENT = data_pb2.DataCommitted(
    dataset="wine", uri="file:///d/wine.csv", sha256="e" * 64, format="csv", row_count=178
)
SPEC = spec_for(EVENT)


def record(value, headers, offset=7):
    return {
        "topic": SPEC.topic,
        "partition": 1,
        "offset": offset,
        "timestamp_ms": 1_700_000_000_000,
        "headers": headers,
        "value": value,
    }


def test_protobuf_round_trip_keeps_every_attribute():
    value, headers = encode(EVENT, SPEC, source="mlops-registry", event_id="id-1")
    env, event = decode(**record(value, headers))
    assert event == EVENT
    assert (env.id, env.source, env.type, env.specversion) == (
        "id-1",
        "mlops-registry",
        "mlops.data.committed.v1",
        "1.0",
    )
    assert env.content_type == "application/protobuf"
    assert env.subject == "wine"


def test_json_round_trip_uses_the_protobuf_json_mapping():
    value, headers = encode(EVENT, SPEC, source="s", content_type=JSON)
    assert json.loads(value)["rowCount"] == "178"
    _, event = decode(**record(value, headers))
    assert event == EVENT


def test_missing_ce_headers_are_filled_with_a_stable_id():
    value = json.dumps({"dataset": "wine", "uri": "s3://b/k", "sha256": "f" * 64, "format": "csv"}).encode()
    env, event = decode(**record(value, [("content-type", b"application/json")], offset=42))
    assert env.id.startswith(f"{SPEC.topic}/1/42/1700000000000/")
    again, _ = decode(**record(value, [("content-type", b"application/json")], offset=42))
    assert again.id == env.id, "a redelivered record gets the same id, so the inbox drops the repeat"
    assert env.type == "mlops.data.committed.v1"
    assert env.time == "2023-11-14T22:13:20.000000Z"
    assert event.dataset == "wine"


def test_a_generated_id_differs_for_another_record_at_the_same_position():
    """A recreated topic starts its offsets again: the same position then holds another record."""
    first = {**record(b'{"dataset": "wine"}', [], offset=3)}
    later_time = {**first, "timestamp_ms": first["timestamp_ms"] + 86_400_000}
    other_value = {**first, "value": b'{"dataset": "iris"}'}
    ids = {decode(**fields)[0].id for fields in (first, later_time, other_value)}
    assert len(ids) == 3, ids


def test_content_type_is_sniffed_when_absent():
    _, event = decode(**record(b'{"dataset": "iris"}', []))
    assert event.dataset == "iris"


@pytest.mark.parametrize(
    ("value", "headers", "reason"),
    [
        (b"\xff\xff", [("content-type", b"application/protobuf")], "does not parse as DataCommitted"),
        (
            b'{"dataset": 3.5, "nope": }',
            [("content-type", b"application/json")],
            "JSON payload does not match",
        ),
        (b"x", [("content-type", b"text/csv")], "content-type 'text/csv' is not supported"),
        (
            b"x",
            [("ce_type", b"mlops.data.committed.v2")],
            "ce_type 'mlops.data.committed.v2' is not accepted",
        ),
        (b"x", [("ce_specversion", b"0.3")], "ce_specversion '0.3' is not supported"),
        (None, [], "tombstone"),
        (b"x", [("ce_id", b"\xff")], "not UTF-8"),
    ],
)
def test_malformed_records_say_why(value, headers, reason):
    with pytest.raises(MalformedEvent, match=reason):
        decode(**record(value, headers))


def test_unknown_topic_is_malformed():
    with pytest.raises(MalformedEvent, match="no known event type"):
        decode(topic="elsewhere", partition=0, offset=0, timestamp_ms=None, headers=[], value=b"")


def test_an_event_that_decodes_but_can_never_be_handled_is_malformed_naming_the_field():
    value = json.dumps(
        {"dataset": "wine", "uri": "s3://b/k", "sha256": "a" * 64, "committedAt": "9999-12-31T23:59:59Z"}
    ).encode()
    decode(**record(value, []))
    far = json.dumps({"dataset": "wine", "sha256": "nope"}).encode()
    with pytest.raises(MalformedEvent, match=r"sha256: 'nope' is not a sha256"):
        decode(**record(far, []))
    unnamed = json.dumps({"uri": "s3://b/k"}).encode()
    with pytest.raises(MalformedEvent, match=r"dataset: is required"):
        decode(**record(unnamed, []))
    _, event = decode(**record(far, []), check=False)
    assert event.sha256 == "nope"
