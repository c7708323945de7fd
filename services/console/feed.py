"""The event topics, read for the live feed and the dead letters: every topic of the catalog but the
inference log (too many records to show one by one), and every dead-letter topic. Bounded
throughout: the recent events, the dead letters kept per topic and the browsers listening."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from dataclasses import dataclass, field

from google.protobuf import json_format
from google.protobuf.message import DecodeError

from mlops.bus.acl import OUTBOX_DEAD_LETTERS
from mlops.event_catalog import DLQ_SUFFIX, all_events, spec_for_topic
from mlops.events.v1 import monitoring_pb2
from mlops.settings import BusSettings, KafkaSettings

log = logging.getLogger("mlops.console.feed")
QUIET = (monitoring_pb2.InferenceLogged,)
"""Events too many to follow one by one: their volume shows on the monitor's metrics instead."""
SUMMARY_FIELDS = (
    "model",
    "version",
    "candidate_version",
    "dataset",
    "state",
    "traffic_percent",
    "reason",
    "passed",
)
QUEUE_SIZE = 64
TAIL_PER_PARTITION = 5
"""Events read back per partition when the console starts, so that the feed is not empty."""


@dataclass
class Event:
    topic: str
    type: str
    key: str
    time: str
    event_id: str
    summary: str

    def as_json(self) -> str:
        return json.dumps(self.__dict__)


@dataclass
class DeadLetter:
    topic: str
    """The dead-letter topic it was read from."""
    original_topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]] = field(repr=False)
    reason: str
    error_type: str
    attempts: str
    time: str
    event_type: str

    @property
    def key_text(self) -> str:
        return (self.key or b"").decode(errors="replace")

    @property
    def id(self) -> str:
        return f"{self.partition}-{self.offset}"

    def original_headers(self) -> list[tuple[str, bytes]]:
        """The headers it was first published with, without the dead-letter ones."""
        return [(name, value) for name, value in self.headers if not name.startswith("mlops_dlq_")]


def _header(headers, name: str) -> str:
    for key, value in headers or ():
        if key == name:
            return (value or b"").decode(errors="replace")
    return ""


def summarize(topic: str, value: bytes, content_type: str) -> str:
    """A line about an event: its model, version, state, reason and the like, whatever it has."""
    spec = spec_for_topic(topic)
    if spec is None:
        return f"{len(value)} bytes"
    message = spec.message()
    try:
        if content_type.startswith("application/json"):
            json_format.Parse(value, message, ignore_unknown_fields=True)
        else:
            message.ParseFromString(value)
    except (DecodeError, json_format.ParseError, UnicodeDecodeError):
        return f"undecodable {spec.message.__name__} ({len(value)} bytes)"
    shown = json_format.MessageToDict(message, preserving_proto_field_name=True)
    parts = [f"{name}={shown[name]}" for name in SUMMARY_FIELDS if name in shown]
    return " ".join(parts)[:300] or spec.message.__name__


def watched_topics(prefix: str = "") -> tuple[list[str], list[str]]:
    """(event topics for the feed, dead-letter topics)."""
    events = [prefix + spec.topic for spec in all_events() if spec.message not in QUIET]
    dead = [prefix + spec.topic + DLQ_SUFFIX for spec in all_events()] + [prefix + OUTBOX_DEAD_LETTERS]
    return events, dead


class Feed:
    """Reads the topics in the background; pages read what it holds, browsers follow it over SSE."""

    def __init__(
        self,
        kafka: KafkaSettings | None,
        bus: BusSettings | None,
        *,
        recent: int,
        dead_letters: int,
        clients: int,
        replay_as: KafkaSettings | None = None,
    ) -> None:
        self.kafka, self.bus = kafka, bus
        self.replay_as = replay_as
        """Kafka as the identity that replays dead letters (the operators'); None: replay is off."""
        self._recent: deque[Event] = deque(maxlen=recent)
        self._dead: dict[str, deque[DeadLetter]] = {}
        self._dead_limit = dead_letters
        self._clients: set[asyncio.Queue[Event]] = set()
        self.max_clients = clients
        self.ready = False
        self.error = ""
        self._task: asyncio.Task | None = None
        self._producer = None

    # --- what pages read -------------------------------------------------------------------
    def recent(self, limit: int = 50) -> list[Event]:
        return list(self._recent)[-limit:][::-1]

    def dead_letters(self) -> dict[str, list[DeadLetter]]:
        return {topic: list(kept)[::-1] for topic, kept in sorted(self._dead.items())}

    def dead_letter(self, topic: str, letter_id: str) -> DeadLetter | None:
        return next((d for d in self._dead.get(topic, ()) if d.id == letter_id), None)

    # --- browsers ----------------------------------------------------------------------------
    def listen(self) -> asyncio.Queue[Event] | None:
        """A queue of new events for one browser; None when too many are listening already."""
        if len(self._clients) >= self.max_clients:
            return None
        queue: asyncio.Queue[Event] = asyncio.Queue(maxsize=QUEUE_SIZE)
        self._clients.add(queue)
        return queue

    def leave(self, queue: asyncio.Queue[Event]) -> None:
        self._clients.discard(queue)

    @property
    def listeners(self) -> int:
        return len(self._clients)

    # --- records in --------------------------------------------------------------------------
    def take(
        self, topic: str, partition: int, offset: int, key, value, headers, *, news: bool = True
    ) -> None:
        """One record in; `news` False for a dead letter read back from before the console started
        (kept on the dead-letter page, not announced as new)."""
        headers = [(k, v or b"") for k, v in headers or ()]
        if topic.endswith(DLQ_SUFFIX):
            letter = DeadLetter(
                topic=topic,
                original_topic=_header(headers, "mlops_dlq_topic") or topic.removesuffix(DLQ_SUFFIX),
                partition=partition,
                offset=offset,
                key=key,
                value=value or b"",
                headers=headers,
                reason=_header(headers, "mlops_dlq_reason") or "no reason recorded",
                error_type=_header(headers, "mlops_dlq_error_type"),
                attempts=_header(headers, "mlops_dlq_attempts"),
                time=_header(headers, "mlops_dlq_time"),
                event_type=_header(headers, "ce_type"),
            )
            self._dead.setdefault(topic, deque(maxlen=self._dead_limit)).append(letter)
            event = Event(
                topic,
                "dead letter",
                (key or b"").decode(errors="replace"),
                letter.time,
                _header(headers, "ce_id"),
                letter.reason[:300],
            )
            if not news:
                return
        else:
            event = Event(
                topic=topic,
                type=_header(headers, "ce_type"),
                key=(key or b"").decode(errors="replace"),
                time=_header(headers, "ce_time"),
                event_id=_header(headers, "ce_id"),
                summary=summarize(topic, value or b"", _header(headers, "content-type")),
            )
        self._recent.append(event)
        for queue in list(self._clients):
            if queue.full():  # a browser that does not keep up misses events rather than holding memory
                queue.get_nowait()
            queue.put_nowait(event)

    # --- the consumer ------------------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="console feed")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._producer is not None:
            await self._producer.stop()

    async def _run(self) -> None:
        from aiokafka import AIOKafkaConsumer

        assert self.kafka is not None and self.bus is not None
        events, dead = watched_topics(self.bus.topic_prefix)
        while True:
            consumer = AIOKafkaConsumer(
                **self.kafka.client_options(),
                group_id=None,
                client_id="mlops-console",
                auto_offset_reset="earliest",
                enable_auto_commit=False,
            )
            try:
                await consumer.start()
                await self._position(consumer, events, dead)
                started_ms = int(time.time() * 1000) - 60_000
                self.ready, self.error = True, ""
                async for record in consumer:
                    self.take(
                        record.topic,
                        record.partition,
                        record.offset,
                        record.key,
                        record.value,
                        record.headers,
                        news=record.timestamp >= started_ms,
                    )
            except asyncio.CancelledError:
                raise
            except Exception as error:  # the broker away: say so on the pages, try again
                self.error = f"{type(error).__name__}: {error}"[:300]
                log.warning("event feed interrupted: %s", self.error)
                await asyncio.sleep(5)
            finally:
                await consumer.stop()

    async def _position(self, consumer, events: list[str], dead: list[str]) -> None:
        """Every partition of the watched topics: the dead letters from their beginning (the page
        keeps the newest), the events from their last few records (the feed is about what is new)."""
        existing = await consumer.topics()
        consumer.subscribe([t for t in events + dead if t in existing])
        for _ in range(200):  # without a group the consumer takes every partition once it has metadata
            if consumer.assignment():
                break
            await asyncio.sleep(0.05)
        assigned = consumer.assignment()
        letters = [p for p in assigned if p.topic.endswith(DLQ_SUFFIX) or p.topic in dead]
        recent = [p for p in assigned if p not in letters]
        if letters:
            await consumer.seek_to_beginning(*letters)
        ends = await consumer.end_offsets(recent) if recent else {}
        for partition, end in ends.items():
            consumer.seek(partition, max(0, end - TAIL_PER_PARTITION))

    async def replay(self, letter: DeadLetter) -> None:
        """Publish the original record again to its topic: same key, value and original headers."""
        from aiokafka import AIOKafkaProducer

        if self.replay_as is None:
            raise RuntimeError(
                "replay is off: MLOPS_CONSOLE_REPLAY_SASL_USERNAME and _PASSWORD name who publishes"
            )
        if self._producer is None:
            producer = AIOKafkaProducer(
                **self.replay_as.client_options(),
                client_id="mlops-console-replay",
                enable_idempotence=True,
                acks="all",
            )
            await producer.start()
            self._producer = producer
        await self._producer.send_and_wait(
            letter.original_topic, letter.value, key=letter.key, headers=letter.original_headers()
        )
