"""Consuming events: a CONSUMER span per record, inbox de-duplication, bounded retries, dead letters.

Each assigned partition has its own task (`PartitionWorker`): its records are handled in order, and
a slow or stuck partition holds up no other. A partition's offset is committed once its records are
handled and everything they published is acknowledged, so a crash redelivers (at least once) and
the inbox turns redelivery into a no-op. On a rebalance the revoked partitions' tasks finish their
record in hand (or are cancelled after a grace period) before their offsets are committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, ConsumerRecord, TopicPartition
from aiokafka.errors import IllegalStateError, KafkaError
from aiokafka.structs import OffsetAndMetadata
from google.protobuf.message import Message
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from sqlmodel.ext.asyncio.session import AsyncSession

from mlops import envelope
from mlops.bus import metrics
from mlops.bus.admin import ensure_topics, with_dead_letters
from mlops.bus.deadletter import dead_letter_headers, reason_of
from mlops.bus.inbox import Inbox
from mlops.bus.partitions import PartitionWorker
from mlops.bus.producer import EventPublisher
from mlops.bus.tracing import extract, start_span
from mlops.db import Database
from mlops.envelope import Envelope, MalformedEvent
from mlops.errors import MlopsError
from mlops.event_catalog import DLQ_SUFFIX, spec_for
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
        revoke_grace_s: float = 10.0,
        inbox_prune_interval_s: float = 600.0,
    ) -> None:
        self.kafka = kafka
        self.bus = bus
        self.group_id = group_id
        self.publisher = publisher
        self.database = database
        self.inbox = inbox
        self.from_end = from_end
        """Skip history: start at the end of every partition (tools and tests, not services)."""
        self.revoke_grace_s = revoke_grace_s
        """How long a revoked or stopping partition may take to finish its record before it is cancelled."""
        self.inbox_prune_interval_s = inbox_prune_interval_s
        """How often ids older than `bus.inbox_retention_hours` are deleted from the inbox."""
        self._workers: dict[TopicPartition, PartitionWorker] = {}
        self._committed: dict[TopicPartition, int] = {}
        self._retry_delay: dict[TopicPartition, float] = {}
        self._generation = 0
        """Counts revocations: a batch fetched across one is dropped (its positions were reset)."""
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
            **self.kafka.client_options(),
            group_id=self.group_id,
            client_id=self.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=self.bus.max_poll_records,
            isolation_level="read_committed",
        )
        await self._consumer.start()
        self._consumer.subscribe(topics, listener=_Revocations(self))

    async def stop(self) -> None:
        """Let each partition finish its record in hand, commit what is acknowledged, leave the group."""
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
        """Fetch and hand records to their partitions' tasks until stop(); commit what they acknowledged.

        One commit is in flight at a time and never blocks fetching. A partition whose task failed on
        an outage (its publishes were not acknowledged, or a dead letter could not be written) is read
        again from its first unacknowledged record after a back-off; the other partitions go on.
        """
        assert self._consumer is not None, "start() first"
        consumer = self._consumer
        committing: asyncio.Task | None = None
        pruning = (
            asyncio.create_task(self._prune_inbox(), name="inbox prune")
            if self.database is not None and self.inbox is not None
            else None
        )
        try:
            while not self._stopping.is_set():
                generation = self._generation
                try:
                    batch = await consumer.getmany(timeout_ms=self.bus.poll_timeout_ms)
                except KafkaError as error:
                    log.warning("consumer %s: fetching failed: %s", self.group_id, error)
                    await asyncio.sleep(self.bus.retry_backoff_ms / 1000)
                    continue
                failed = self._reread_failed(consumer)
                if generation == self._generation:
                    for tp, records in batch.items():
                        if tp not in failed and records:
                            self._worker(consumer, tp).put(records)
                else:
                    self._unread(consumer, batch)
                if committing is None or committing.done():
                    if committing is not None and not committing.cancelled() and committing.exception():
                        log.warning(
                            "consumer %s: offsets not committed yet (retried): %s",
                            self.group_id,
                            committing.exception(),
                        )
                    committing = self._commit_acknowledged(consumer)
        finally:
            try:
                if pruning is not None:
                    pruning.cancel()
                    await asyncio.gather(pruning, return_exceptions=True)
                if committing is not None:
                    await asyncio.gather(committing, return_exceptions=True)
                workers = list(self._workers.values())
                self._workers.clear()
                await asyncio.gather(*(worker.close(self.revoke_grace_s) for worker in workers))
                final = self._commit_acknowledged(consumer, workers)
                if final is not None:
                    await asyncio.gather(final, return_exceptions=True)
            finally:
                await consumer.stop()
                self._stopped.set()

    def _unread(self, consumer: AIOKafkaConsumer, batch: dict[TopicPartition, list[ConsumerRecord]]) -> None:
        """Put back a batch fetched across a rebalance: its records were handed to nobody, yet the
        consumer's position has moved past them, so each partition still ours is read again from the
        batch's first record (the inbox makes a second handling harmless)."""
        assigned = consumer.assignment()
        for tp, records in batch.items():
            if records and tp in assigned:
                with contextlib.suppress(IllegalStateError, KeyError):
                    consumer.seek(tp, records[0].offset)

    def _worker(self, consumer: AIOKafkaConsumer, tp: TopicPartition) -> PartitionWorker:
        worker = self._workers.get(tp)
        if worker is None:
            worker = self._workers[tp] = PartitionWorker(
                tp,
                handle=self._handle_record,
                pause=lambda tp: self._flow(consumer.pause, tp),
                resume=lambda tp: self._flow(consumer.resume, tp),
                limit=self.bus.max_poll_records,
                delay_s=self._retry_delay.get(tp, 0.0),
            )
        return worker

    def _flow(self, pause_or_resume, tp: TopicPartition) -> None:
        try:
            pause_or_resume(tp)
        except (IllegalStateError, KeyError):
            pass  # revoked meanwhile: its worker is being closed

    def _reread_failed(self, consumer: AIOKafkaConsumer) -> set[TopicPartition]:
        """Restart the partitions whose task failed on an outage from their first unacknowledged record.

        Any other failure is a defect of the service, not of the message: it stops the consumer.
        """
        failed: set[TopicPartition] = set()
        for tp, worker in list(self._workers.items()):
            error = worker.failure
            if error is None:
                continue
            if not (isinstance(error, KafkaError) or is_outage(error)) or self._stopping.is_set():
                raise error
            failed.add(tp)
            del self._workers[tp]
            delay = self._retry_delay.get(tp, 0.0)
            delay = min(
                max(delay * 2, self.bus.retry_backoff_ms / 1000), self.bus.retry_backoff_max_ms / 1000
            )
            self._retry_delay[tp] = delay
            log.warning(
                "consumer %s: %s failed (%s); re-reading it from offset %s in %.1fs",
                self.group_id,
                tp,
                error,
                worker.reread_from,
                delay,
            )
            if worker.reread_from is not None:
                with contextlib.suppress(IllegalStateError, KeyError):
                    consumer.seek(tp, worker.reread_from)
            self._flow(consumer.resume, tp)
        return failed

    def _commit_acknowledged(
        self, consumer: AIOKafkaConsumer, workers: list[PartitionWorker] | None = None
    ) -> asyncio.Task | None:
        """Commit, in a task, each partition's acknowledged offset that is not committed yet."""
        offsets: dict[TopicPartition, int] = {}
        for worker in workers if workers is not None else self._workers.values():
            if worker.acked is not None and self._committed.get(worker.tp) != worker.acked + 1:
                offsets[worker.tp] = worker.acked + 1
                self._retry_delay.pop(worker.tp, None)  # it makes progress again
        if not offsets:
            return None
        return asyncio.create_task(self._commit(consumer, offsets))

    async def _commit(self, consumer: AIOKafkaConsumer, offsets: dict[TopicPartition, int]) -> None:
        await consumer.commit({tp: OffsetAndMetadata(offset, "") for tp, offset in offsets.items()})
        for tp, offset in offsets.items():
            if tp in self._workers:  # a partition revoked meanwhile keeps no entry
                self._committed[tp] = offset
            highwater = consumer.highwater(tp)
            if highwater is not None:
                metrics.LAG.labels(tp.topic, str(tp.partition), self.group_id).set(max(highwater - offset, 0))

    async def _revoke(self, revoked: set[TopicPartition]) -> None:
        """Close the revoked partitions' tasks and commit what they acknowledged, before the group moves on."""
        if not revoked:
            return  # the first join revokes nothing: no position was reset
        self._generation += 1
        workers = [self._workers.pop(tp) for tp in revoked if tp in self._workers]
        await asyncio.gather(*(worker.close(self.revoke_grace_s) for worker in workers))
        commit = self._commit_acknowledged(self._consumer, workers) if self._consumer else None
        if commit is not None:
            try:
                await commit
            except KafkaError as error:
                log.warning(
                    "consumer %s: offsets of revoked partitions not committed: %s", self.group_id, error
                )
        for tp in revoked:
            self._committed.pop(tp, None)
            self._retry_delay.pop(tp, None)

    async def _prune_inbox(self) -> None:
        """Delete inbox ids older than the retention, now and then every `inbox_prune_interval_s`."""
        assert self.database is not None and self.inbox is not None
        retention = timedelta(hours=self.bus.inbox_retention_hours)
        while True:
            try:
                pruned = await self.inbox.prune(self.database, retention)
                if pruned:
                    log.info("inbox of %s: %d ids older than %s pruned", self.inbox.schema, pruned, retention)
            except Exception as error:  # the next round tries again; consuming goes on regardless
                log.warning("inbox of %s not pruned: %s", self.inbox.schema, error)
            await asyncio.sleep(self.inbox_prune_interval_s)  # a schedule, not a readiness wait

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
        reason = reason_of(error)
        span.set_status(Status(StatusCode.ERROR, reason))
        span.set_attribute("mlops.dead_lettered", True)
        headers = dead_letter_headers(
            record.headers,
            reason=reason,
            error_type=type(error).__name__,
            attempts=attempts,
            topic=record.topic,
            where=[
                ("partition", str(record.partition)),
                ("offset", str(record.offset)),
                ("consumer", self.group_id),
            ],
        )
        log.error(
            "dead-lettering %s offset %d after %d attempts: %s", record.topic, record.offset, attempts, reason
        )
        await self.publisher.publish_encoded(
            record.topic + DLQ_SUFFIX, record.key, record.value or b"", headers
        )
        if attempts == 0:
            self._metrics(record.topic)[0]["dead_lettered"].inc()


class _Revocations(ConsumerRebalanceListener):
    """Lets the consumer settle revoked partitions before the group reassigns them."""

    def __init__(self, owner: EventConsumer) -> None:
        self.owner = owner

    async def on_partitions_revoked(self, revoked) -> None:
        await self.owner._revoke(set(revoked))

    async def on_partitions_assigned(self, assigned) -> None:
        return None
