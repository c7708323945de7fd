"""The outbox relay's choice between dead-lettering a row and waiting out an outage, without Kafka."""

from __future__ import annotations

import asyncio
import json

import pytest
from aiokafka.errors import KafkaConnectionError, MessageSizeTooLargeError

from mlops.bus.producer import _deliveries
from mlops.bus.relay import OutboxRelay
from mlops.settings import BusSettings, KafkaSettings

LIMIT = 1000


class FakePublisher:
    """Refuses values over LIMIT bytes at send time, as aiokafka's max_request_size check does."""

    def __init__(self, *, down: bool = False) -> None:
        self.kafka = KafkaSettings()
        self.down = down
        self.sent: list[tuple[str, bytes, dict]] = []

    async def publish_encoded(self, topic, key, value, headers, parent=None):
        if self.down:
            raise KafkaConnectionError("no broker")
        if len(value) > LIMIT:
            raise MessageSizeTooLargeError(f"The message is {len(value)} bytes when serialized")
        self.sent.append((topic, value, dict(headers)))
        delivery = asyncio.get_running_loop().create_future()
        delivery.set_result(None)
        pending = _deliveries.get()
        if pending is not None:
            pending.append(delivery)
            return
        await delivery


class FakeConnection:
    def __init__(self, rows) -> None:
        self.rows = rows
        self.deleted: list[int] = []

    async def fetch(self, query, limit):
        return self.rows[:limit]

    async def execute(self, query, ids):
        self.deleted.extend(ids)


def row(row_id: int, topic: str, value: bytes, headers=None):
    pairs = headers if headers is not None else json.dumps([["ce_id", f"id-{row_id}"]])
    return {"id": row_id, "topic": topic, "key": b"k", "value": value, "headers": pairs}


@pytest.fixture(autouse=True)
def no_topic_creation(monkeypatch):
    async def ensure(kafka, bus, topics):
        return None

    monkeypatch.setattr("mlops.bus.relay.ensure_topics", ensure)


def relay(publisher) -> OutboxRelay:
    return OutboxRelay(database=None, schema="unit", publisher=publisher, bus=BusSettings())


async def test_a_row_over_the_size_limit_is_dead_lettered_and_the_next_row_published():
    publisher = FakePublisher()
    connection = FakeConnection([row(1, "t", b"x" * (LIMIT + 1)), row(2, "t", b"small")])
    assert await relay(publisher).relay_once(connection) == 2
    assert connection.deleted == [1, 2]
    (topic, value, _), (dead_topic, dead_value, dead_headers) = publisher.sent
    assert (topic, value) == ("t", b"small")
    assert dead_topic == "t.dlq"
    assert dead_value == b"", "a value Kafka refused for its size cannot travel in the dead letter"
    assert b"max_request_size" in dead_headers["mlops_dlq_reason"]
    assert dead_headers["mlops_dlq_value_omitted"] == f"{LIMIT + 1} bytes".encode()
    assert dead_headers["ce_id"] == b"id-1", "the original headers travel with the dead letter"
    assert dead_headers["mlops_dlq_outbox_id"] == b"1"


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (row(1, "bad topic!", b"v"), "not a valid Kafka topic name"),
        (row(1, "t", b"v", headers='{"not": "pairs"}'), "not a list of [name, value] text pairs"),
    ],
)
async def test_a_row_that_cannot_be_sent_says_why_in_its_dead_letter(bad, reason):
    publisher = FakePublisher()
    connection = FakeConnection([bad, row(2, "t", b"fine")])
    await relay(publisher).relay_once(connection)
    assert connection.deleted == [1, 2]
    dead = [headers for _, _, headers in publisher.sent if "mlops_dlq_reason" in headers]
    assert len(dead) == 1 and reason in dead[0]["mlops_dlq_reason"].decode()
    assert ("t", b"fine") in [(topic, value) for topic, value, _ in publisher.sent]


async def test_an_invalid_topic_goes_to_the_catch_all_dead_letter_topic():
    publisher = FakePublisher()
    await relay(publisher).relay_once(FakeConnection([row(1, "bad topic!", b"v")]))
    assert [topic for topic, _, _ in publisher.sent] == ["mlops.outbox.dlq"]


async def test_an_outage_keeps_every_row_for_the_next_round():
    connection = FakeConnection([row(1, "t", b"v")])
    with pytest.raises(KafkaConnectionError):
        await relay(FakePublisher(down=True)).relay_once(connection)
    assert connection.deleted == []


async def test_the_age_of_the_oldest_waiting_row_is_measured_and_zero_once_none_waits():
    from datetime import UTC, datetime, timedelta

    from mlops.bus import metrics

    waiting = {**row(1, "t", b"v"), "created_at": datetime.now(UTC) - timedelta(seconds=90)}
    await relay(FakePublisher(down=False)).relay_once(FakeConnection([waiting, row(2, "t", b"v")]))
    assert 89 <= metrics.OUTBOX_OLDEST_AGE.labels("unit")._value.get() < 100
    await relay(FakePublisher()).relay_once(FakeConnection([]))
    assert metrics.OUTBOX_OLDEST_AGE.labels("unit")._value.get() == 0
