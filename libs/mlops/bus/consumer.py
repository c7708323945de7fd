"""Consuming events: a CONSUMER span per record, inbox de-duplication, bounded retries, dead letters.

Records of one partition are handled in order; partitions of a batch are handled concurrently.
Offsets are committed after the batch is handled and everything it published is acknowledged,
so a crash redelivers (at least once) and the inbox turns redelivery into a no-op. The
acknowledgements and commit of one batch overlap the handling of the next (see `run`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.errors import (
    KafkaError,
)
from aiokafka.structs import OffsetAndMetadata
from google.protobuf.message import Message
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from sqlmodel.ext.asyncio.session import AsyncSession

from mlops.bus import envelope, metrics
from mlops.bus.admin import ensure_topics, with_dead_letters
from mlops.bus.catalog import DLQ_SUFFIX, spec_for
from mlops.bus.envelope import Envelope, MalformedEvent, rfc3339
from mlops.bus.inbox import Inbox
from mlops.bus.producer import EventPublisher, deferred_deliveries
from mlops.bus.tracing import extract, start_span
from mlops.db import Database
from mlops.errors import MlopsError
from mlops.outages import is_outage
from mlops.settings import BusSettings, KafkaSettings

log = logging.getLogger(__name__)


@dataclass
class EventContext:
    """What a handler knows about the record besides the event itself."""

    envelope: Envelope
    topic: str
    partition: int
    offset: int
    key: str | None
    attempt: int
    session: AsyncSession | None = None
    """The open transaction (idempotent handlers): write state and outbox rows through it."""


Handler = Callable[[Message, EventContext], Awaitable[None]]


async def _settle(task: asyncio.Task | None) -> None:
    """Wait for an acknowledge-and-commit task; its failure only means the batch will be redelivered."""
    if task is None:
        return None
    try:
        await task
    except Exception as error:
        log.warning("offsets not committed (the records will be redelivered): %s", error)
    return None


@dataclass(frozen=True)
class _Subscription:
    handler: Handler
    idempotent: bool


class EventConsumer:
    """One consumer group of one service. subscribe(), then start() and run() until stop()."""

    def __init__(
        self,
        kafka: KafkaSettings,
        bus: BusSettings,
        *,
        group_id: str,
        publisher: EventPublisher,
        database: Database | None = None,
        inbox: Inbox | None = None,
        from_end: bool = False,
    ) -> None:
        self.kafka = kafka
        self.bus = bus
        self.group_id = group_id
        self.publisher = publisher
        self.database = database
        self.inbox = inbox
        self.from_end = from_end
        """Skip history: start at the end of every partition (tools and tests, not services)."""
        self._subscriptions: dict[str, _Subscription] = {}
        self._metric_children: dict[str, tuple] = {}
        self._consumer: AIOKafkaConsumer | None = None
        self._stopping = asyncio.Event()
        self._stopped = asyncio.Event()

    def subscribe(self, event: type[Message], handler: Handler, *, idempotent: bool = True) -> None:
        """Call `handler` for every event of this type. Idempotent handlers run inside an inbox transaction."""
        if idempotent and (self.database is None or self.inbox is None):
            raise ValueError("an idempotent handler needs the consumer's database and inbox")
        self._subscriptions[self.bus.topic_prefix + spec_for(event).topic] = _Subscription(
            handler, idempotent
        )

    async def start(self) -> None:
        topics = list(self._subscriptions)
        await ensure_topics(self.kafka, self.bus, with_dead_letters(topics))
        self._consumer = AIOKafkaConsumer(
            *topics,
            **self.kafka.client_options(),
            group_id=self.group_id,
            client_id=self.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=self.bus.max_poll_records,
            isolation_level="read_committed",
        )
        await self._consumer.start()

    async def stop(self) -> None:
        """Finish the batch in hand, commit it, and leave the group."""
        self._stopping.set()
        if self._consumer is not None:
            await self._stopped.wait()

    async def wait_assigned(self, timeout_s: float = 30.0) -> None:
        """Return once the group has assigned this consumer its partitions and their positions are known.

        With `from_end`, positions are fixed at the end before returning, so an event published
        after this call is never skipped.
        """
        assert self._consumer is not None
        deadline = time.monotonic() + timeout_s
        while not self._consumer.assignment():
            if time.monotonic() > deadline:
                raise TimeoutError(f"consumer group {self.group_id} got no partitions in {timeout_s}s")
            await asyncio.sleep(0.02)
        assignment = list(self._consumer.assignment())
        if self.from_end:
            await self._consumer.seek_to_end(*assignment)
        for tp in assignment:
            await self._consumer.position(tp)

    async def run(self) -> None:
        """Handle batches until stop(); one batch's acknowledgements and commit overlap the next batch.

        Batch N's deliveries are awaited and its offsets committed in a task while batch N+1 is
        fetched and handled; the task is awaited before batch N+1's own one starts. So at most one
        commit is in flight, commits go out in order, and an offset is only ever committed once
        every record before it was handled and everything those records published is acknowledged
        (at least once, as before). If a delivery or a commit fails, the loop stops with that error
        and nothing later is committed: the records since then are redelivered.
        """
        assert self._consumer is not None, "start() first"
        consumer = self._consumer
        committing: asyncio.Task | None = None
        backoff = self.bus.retry_backoff_ms / 1000
        try:
            while not self._stopping.is_set():
                try:
                    batch = await consumer.getmany(timeout_ms=self.bus.poll_timeout_ms)
                    if committing is not None and committing.done():
                        committing, finished = None, committing
                        finished.result()  # raises the failure of the previous batch's acks or commit
                    if not batch:
                        continue
                    with deferred_deliveries() as pending:
                        done = await asyncio.gather(
                            *(self._handle_partition(tp, records) for tp, records in batch.items())
                        )
                    if committing is not None:
                        previous, committing = committing, None
                        await previous
                    committing = asyncio.create_task(self._acknowledge_and_commit(consumer, pending, done))
                    backoff = self.bus.retry_backoff_ms / 1000
                except Exception as error:
                    if not (isinstance(error, KafkaError) or is_outage(error)) or self._stopping.is_set():
                        raise
                    # The broker or a dependency went away mid-batch: nothing after the last commit
                    # counts. Re-read from there once it is back (the inbox absorbs the repeats).
                    log.warning(
                        "consumer %s: %s; re-reading from the last committed offsets", self.group_id, error
                    )
                    committing = await _settle(committing)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, self.bus.retry_backoff_max_ms / 1000)
                    await self._rewind(consumer)
        finally:
            try:
                await _settle(committing)  # the batch in hand: its acks and its commit, if they can still go
            finally:
                await consumer.stop()
                self._stopped.set()

    async def _rewind(self, consumer: AIOKafkaConsumer) -> None:
        assignment = list(consumer.assignment())
        if not assignment:
            return
        try:
            await consumer.seek_to_committed(*assignment)
        except KafkaError as error:
            log.warning("consumer %s could not re-read committed offsets yet: %s", self.group_id, error)

    async def _acknowledge_and_commit(
        self,
        consumer: AIOKafkaConsumer,
        pending: list[asyncio.Future],
        done: list[tuple[TopicPartition, int]],
    ) -> None:
        if pending:
            await asyncio.gather(*pending)
        await consumer.commit({tp: OffsetAndMetadata(offset + 1, "") for tp, offset in done})
        self._record_lag(consumer, done)

    def _record_lag(self, consumer: AIOKafkaConsumer, handled: list[tuple[TopicPartition, int]]) -> None:
        for tp, offset in handled:
            highwater = consumer.highwater(tp)
            if highwater is not None:
                metrics.LAG.labels(tp.topic, str(tp.partition), self.group_id).set(
                    max(highwater - offset - 1, 0)
                )

    async def _handle_partition(
        self, tp: TopicPartition, records: list[ConsumerRecord]
    ) -> tuple[TopicPartition, int]:
        for record in records:
            await self._handle_record(record)
        return tp, records[-1].offset

    async def _handle_record(self, record: ConsumerRecord) -> None:
        """Handle one record under a CONSUMER span whose parent is the producer's context.

        The span is started with `start_span` and attached by hand rather than through
        `start_as_current_span` (a generator context manager wrapping another): same span, same
        exception recording, a fraction of the cost per record. Attributes are only built for a
        recorded (sampled) span.
        """
        topic = record.topic
        started = time.perf_counter()
        parent = extract(record.headers)
        span = start_span(f"process {topic}", parent, SpanKind.CONSUMER)
        token = otel_context.attach(trace.set_span_in_context(span))
        try:
            recording = span.is_recording()
            if recording:
                span.set_attributes(self._attributes(record))
            try:
                env, event = envelope.decode(
                    topic=topic.removeprefix(self.bus.topic_prefix),
                    partition=record.partition,
                    offset=record.offset,
                    timestamp_ms=record.timestamp,
                    headers=record.headers,
                    value=record.value,
                    key=record.key,
                )
            except MalformedEvent as error:
                await self._dead_letter(record, span, error, attempts=0)
                return
            if recording:
                span.set_attributes(
                    {
                        "messaging.message.id": env.id,
                        "cloudevents.event_id": env.id,
                        "cloudevents.event_type": env.type,
                        "cloudevents.event_source": env.source,
                    }
                )
            outcome = await self._handle_with_retries(record, env, event, span)
            consumed, seconds = self._metrics(topic)
            consumed[outcome].inc()
            seconds.observe(time.perf_counter() - started)
        except Exception as error:
            # What start_as_current_span did for an exception escaping the span.
            if span.is_recording():
                span.record_exception(error)
                span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
            raise
        finally:
            otel_context.detach(token)
            span.end()

    def _attributes(self, record: ConsumerRecord) -> dict:
        attributes = {
            "messaging.system": "kafka",
            "messaging.operation.type": "process",
            "messaging.operation.name": "process",
            "messaging.destination.name": record.topic,
            "messaging.consumer.group.name": self.group_id,
            "messaging.destination.partition.id": str(record.partition),
            "messaging.kafka.offset": record.offset,
        }
        if record.key is not None:
            attributes["messaging.kafka.message.key"] = record.key.decode("utf-8", "replace")
        return attributes

    def _metrics(self, topic: str):
        cached = self._metric_children.get(topic)
        if cached is None:
            outcomes = ("handled", "duplicate", "dead_lettered")
            cached = (
                {outcome: metrics.CONSUMED.labels(topic, self.group_id, outcome) for outcome in outcomes},
                metrics.HANDLE_SECONDS.labels(topic, self.group_id),
            )
            self._metric_children[topic] = cached
        return cached

    async def _handle_with_retries(self, record: ConsumerRecord, env: Envelope, event: Message, span) -> str:
        """Handle one record. A failure of the message or the handler is retried `max_attempts` times, then
        dead-lettered; an outage of the infrastructure (database, broker, store) is waited out instead,
        however long it lasts, because it says nothing about the message."""
        subscription = self._subscriptions[record.topic]
        delay = self.bus.retry_backoff_ms / 1000
        attempt = 1
        while True:
            context = EventContext(
                envelope=env,
                topic=record.topic,
                partition=record.partition,
                offset=record.offset,
                key=record.key.decode("utf-8", "replace") if record.key is not None else None,
                attempt=attempt,
            )
            try:
                if subscription.idempotent:
                    return await self._handle_once(subscription.handler, event, context)
                await subscription.handler(event, context)
                return "handled"
            except Exception as error:
                span.record_exception(error, attributes={"attempt": attempt})
                if is_outage(error):
                    if self._stopping.is_set():
                        raise  # leave the record uncommitted: it is redelivered after the restart
                    log.warning(
                        "%s offset %d waits for an outage to end: %s", record.topic, record.offset, error
                    )
                else:
                    permanent = isinstance(error, MlopsError) and not error.retryable
                    if permanent or attempt >= self.bus.max_attempts:
                        await self._dead_letter(record, span, error, attempts=attempt)
                        return "dead_lettered"
                    attempt += 1
                    log.warning(
                        "handling %s offset %d failed (attempt %d): %s",
                        record.topic,
                        record.offset,
                        attempt - 1,
                        error,
                    )
                metrics.RETRIES.labels(record.topic, self.group_id).inc()
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.bus.retry_backoff_max_ms / 1000)

    async def _handle_once(self, handler: Handler, event: Message, context: EventContext) -> str:
        assert self.database is not None and self.inbox is not None
        async with self.database.transaction() as session:
            if not await self.inbox.claim(session, consumer=self.group_id, event_id=context.envelope.id):
                trace.get_current_span().set_attribute("mlops.duplicate", True)
                return "duplicate"
            context.session = session
            await handler(event, context)
        return "handled"

    async def _dead_letter(self, record: ConsumerRecord, span, error: Exception, *, attempts: int) -> None:
        reason = error.message if isinstance(error, MlopsError) else f"{type(error).__name__}: {error}"
        span.set_status(Status(StatusCode.ERROR, reason))
        span.set_attribute("mlops.dead_lettered", True)
        headers = [
            (name, value or b"") for name, value in record.headers if not name.startswith("mlops_dlq_")
        ]
        headers += [
            ("mlops_dlq_reason", reason.encode()),
            ("mlops_dlq_error_type", type(error).__name__.encode()),
            ("mlops_dlq_attempts", str(attempts).encode()),
            ("mlops_dlq_topic", record.topic.encode()),
            ("mlops_dlq_partition", str(record.partition).encode()),
            ("mlops_dlq_offset", str(record.offset).encode()),
            ("mlops_dlq_consumer", self.group_id.encode()),
            ("mlops_dlq_time", rfc3339().encode()),
        ]
        log.error(
            "dead-lettering %s offset %d after %d attempts: %s", record.topic, record.offset, attempts, reason
        )
        await self.publisher.publish_encoded(
            record.topic + DLQ_SUFFIX, record.key, record.value or b"", headers
        )
        if attempts == 0:
            self._metrics(record.topic)[0]["dead_lettered"].inc()
