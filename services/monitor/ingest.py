"""Consuming `InferenceLogged` at volume: offsets kept with the window state, not an inbox row a message.

Each poll's records are decoded in a worker thread, checked on the event loop (registry look-ups are
cached), counted in a worker thread (numpy over whole batches), and merged into the open windows;
their predictions are copied at once into the transaction of the next commit, uncommitted. Every
`flush_interval_ms`, and whenever a window is due, the core commits the state with the next offset
of every partition in that one PostgreSQL transaction. On (re)assignment a partition resumes at its
stored offset, so a record is counted exactly once however the process stops. A record that cannot
be counted goes to `<topic>.dlq` with the reason (as the shared consumer does) before its offset
is committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.structs import OffsetAndMetadata
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from mlops import envelope
from mlops.bus import EventPublisher
from mlops.bus.admin import ensure_topics, with_dead_letters
from mlops.bus.tracing import extract, start_span
from mlops.envelope import rfc3339
from mlops.errors import MlopsError
from mlops.event_catalog import DLQ_SUFFIX, spec_for
from mlops.events.v1 import monitoring_pb2
from mlops.outages import is_outage
from mlops.settings import BusSettings, KafkaSettings
from mlops.tracecontext import parse_traceparent
from services.monitor.batch import BatchRows, decode_batch
from services.monitor.core import MonitorCore
from services.monitor.counting import CountedBatch, Prepared, count_batch
from services.monitor.settings import MonitorSettings
from services.monitor.windows import CommitPlan

log = logging.getLogger(__name__)


def inference_group(settings: MonitorSettings) -> str:
    return f"{settings.consumer_group}.inference"


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, ingest: InferenceLogIngest) -> None:
        self.ingest = ingest

    async def on_partitions_revoked(self, revoked) -> None:
        await self.ingest.revoke([tp.partition for tp in revoked if tp.topic == self.ingest.topic])

    async def on_partitions_assigned(self, assigned) -> None:
        await self.ingest.assign([tp.partition for tp in assigned if tp.topic == self.ingest.topic])


class InferenceLogIngest:
    def __init__(
        self,
        kafka: KafkaSettings,
        bus: BusSettings,
        *,
        core: MonitorCore,
        publisher: EventPublisher,
        settings: MonitorSettings,
    ) -> None:
        self.kafka = kafka
        self.bus = bus
        self.core = core
        self.publisher = publisher
        self.settings = settings
        self.topic = bus.topic_prefix + spec_for(monitoring_pb2.InferenceLogged).topic
        self.group = inference_group(settings)
        self._consumer: AIOKafkaConsumer | None = None
        self._lock = asyncio.Lock()
        self._stopping = asyncio.Event()
        self._stopped = asyncio.Event()
        self._last_commit = time.monotonic()
        self._committing: asyncio.Task | None = None
        self.ready = asyncio.Event()
        """Set once partitions are assigned and positioned."""

    async def start(self) -> None:
        await ensure_topics(self.kafka, self.bus, with_dead_letters([self.topic]))
        self._consumer = AIOKafkaConsumer(
            **self.kafka.client_options(),
            group_id=self.group,
            client_id=self.group,
            enable_auto_commit=False,
            auto_offset_reset=self.settings.start_from,
            max_poll_records=self.bus.max_poll_records,
            # A logged batch is tens of kilobytes: fetch many per partition per round trip.
            max_partition_fetch_bytes=self.settings.fetch_partition_mb * 1024 * 1024,
            fetch_max_bytes=4 * self.settings.fetch_partition_mb * 1024 * 1024,
            isolation_level="read_committed",
        )
        self._consumer.subscribe([self.topic], listener=_Rebalance(self))
        await self._consumer.start()

    async def wait_assigned(self, timeout_s: float = 30.0) -> None:
        await asyncio.wait_for(self.ready.wait(), timeout_s)

    async def stop(self) -> None:
        self._stopping.set()
        if self._consumer is not None:
            await self._stopped.wait()

    # --- partitions -------------------------------------------------------------------------------

    async def assign(self, partitions: list[int]) -> None:
        assert self._consumer is not None
        async with self._lock:
            resume = await self.core.load(self.topic, partitions)
            for partition in partitions:
                tp = TopicPartition(self.topic, partition)
                if partition in resume:
                    self._consumer.seek(tp, resume[partition])
                elif self.settings.start_from == "latest":
                    await self._consumer.seek_to_end(tp)
                else:
                    await self._consumer.seek_to_beginning(tp)
                position = await self._consumer.position(tp)
                self.core.offsets[(self.topic, partition)] = position
        log.info("inference logs: partitions %s assigned, resuming at %s", partitions, resume)
        self.ready.set()

    async def revoke(self, partitions: list[int]) -> None:
        if not partitions:
            return
        try:
            await self.flush()
        finally:
            self.core.release(self.topic, partitions)

    async def flush(self, now: float | None = None, *, deadline_s: float | None = None) -> int:
        """Commit everything counted so far (after the commit in flight, if any); returns the
        windows closed."""
        async with self._lock:
            await self._settle()
            return await self._write_with_retries(self.core.snapshot(now), deadline_s=deadline_s)

    async def _settle(self) -> None:
        if self._committing is not None:
            committing, self._committing = self._committing, None
            await committing

    # --- the loop ---------------------------------------------------------------------------------

    async def run(self) -> None:
        """Fetch, count and merge, copying predictions into the next commit's transaction as they are
        counted; every `flush_interval_ms` (or when a window is due) snapshot the state and write it
        in the background while the next records are counted. One write is in flight at most, and
        writes happen in snapshot order."""
        assert self._consumer is not None, "start() first"
        consumer = self._consumer
        tick = self.settings.tick_interval_ms
        flush_s = self.settings.flush_interval_ms / 1000
        try:
            while not self._stopping.is_set():
                batch = await consumer.getmany(timeout_ms=tick)
                async with self._lock:
                    if batch:
                        await self._handle(batch)
                        self.core.stage()
                    self._note_progress(consumer)
                    if self._committing is not None and self._committing.done():
                        await self._settle()  # raises what the write raised
                    if self._committing is None and (
                        time.monotonic() - self._last_commit >= flush_s or self.core.due(time.time())
                    ):
                        plan = self.core.snapshot()
                        self._committing = asyncio.create_task(self._write_with_retries(plan))
                self.core.publish_gauges()
        finally:
            try:
                await self.flush(deadline_s=10)
            except Exception as error:
                log.warning("inference logs: final commit failed (records will be read again): %s", error)
            finally:
                await self.core.discard_staged()
                await consumer.stop()
                self._stopped.set()

    def _note_progress(self, consumer: AIOKafkaConsumer) -> None:
        """Which partitions are read up to the broker's end (as of the last fetch)."""
        for tp in consumer.assignment():
            highwater = consumer.highwater(tp)
            position = self.core.offsets.get((tp.topic, tp.partition))
            self.core.caught_up[tp.partition] = (
                highwater is not None and position is not None and position >= highwater
            )

    async def _write_with_retries(self, plan: CommitPlan, *, deadline_s: float | None = None) -> int:
        delay = self.bus.retry_backoff_ms / 1000
        started = time.monotonic()
        while True:
            try:
                closed = await self.core.write(plan)
                break
            except Exception as error:
                if not is_outage(error):
                    raise
                if deadline_s is not None and time.monotonic() - started > deadline_s:
                    raise
                log.warning("inference logs: committing window state waits for an outage to end: %s", error)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.bus.retry_backoff_max_ms / 1000)
        self._last_commit = time.monotonic()
        if self._consumer is not None and plan.offsets:
            # Kafka's copy of the offsets is only for lag tools; PostgreSQL's is the one resumed from.
            assigned = self._consumer.assignment()
            offsets = {
                TopicPartition(topic, partition): OffsetAndMetadata(offset, "")
                for (topic, partition), offset in plan.offsets.items()
                if TopicPartition(topic, partition) in assigned
            }
            try:
                if offsets:
                    await self._consumer.commit(offsets)
            except KafkaError as error:
                log.debug("inference logs: Kafka offset commit skipped: %s", error)
        return closed

    async def _handle(self, batch: dict[TopicPartition, list[ConsumerRecord]]) -> None:
        """Decode (worker thread), look up (event loop, cached), count (worker thread), merge. While a
        thread works, the event loop keeps fetching the next records and answering GetHealth."""
        fresh: list[ConsumerRecord] = []
        last: dict[int, int] = {}
        for tp, records in batch.items():
            expected = self.core.offsets.get((self.topic, tp.partition))
            if tp.partition not in self.core.partitions or expected is None:
                continue  # fetched before a rebalance took the partition away
            # Fetched before a rebalance that resumed this partition at its committed offset: what
            # is older than the in-memory position has been counted already (or is re-read next).
            records = [r for r in records if r.offset >= expected]
            if records:
                fresh.extend(records)
                last[tp.partition] = records[-1].offset
        decoded = await asyncio.to_thread(
            _decode_all,
            fresh,
            self.bus.topic_prefix,
            now=time.time(),
            max_skew_s=self.settings.max_clock_skew_s,
        )
        prepared: list[tuple[ConsumerRecord, Prepared]] = []
        for record, rows in zip(fresh, decoded, strict=True):
            item = await self._prepare(record, rows)
            if item is not None:
                prepared.append((record, item))
        store = self.settings.store_predictions
        counted = await asyncio.to_thread(_count_all, [p for _, p in prepared], store)
        for (record, _), result in zip(prepared, counted, strict=True):
            if isinstance(result, CountedBatch):
                try:
                    self.core.merge(result)
                except Exception as error:  # a defect met by this batch's data: the next batches go on
                    log.exception("inference logs: merging offset %d failed", record.offset)
                    await self._dead_letter(record, error)
            else:
                await self._dead_letter(record, result)
        for partition, offset in last.items():
            self.core.offsets[(self.topic, partition)] = offset + 1

    async def _prepare(self, record: ConsumerRecord, rows: BatchRows | Exception) -> Prepared | None:
        """Registry look-ups for one decoded record; None when it was dead-lettered. A record whose
        trace is sampled gets its CONSUMER span `process <topic>`, a child of the producer's."""
        traceparent = None
        for name, value in record.headers:
            if name == "traceparent" and value:
                traceparent = value.decode("ascii", "replace")
        parent = parse_traceparent(traceparent)
        # The window keeps the link in PostgreSQL (jsonb, which takes no NUL): keep it only as the
        # canonical form of a valid context, whatever else the header carried.
        traceparent = (
            f"00-{parent.trace_id:032x}-{parent.span_id:016x}-{parent.trace_flags:02x}"
            if parent is not None
            else None
        )
        span = None
        if parent is not None and parent.trace_flags.sampled:
            span = start_span(f"process {record.topic}", extract(record.headers), SpanKind.CONSUMER)
            span.set_attributes(
                {
                    "messaging.system": "kafka",
                    "messaging.operation.type": "process",
                    "messaging.destination.name": record.topic,
                    "messaging.consumer.group.name": self.group,
                    "messaging.destination.partition.id": str(record.partition),
                    "messaging.kafka.offset": record.offset,
                }
            )
        delay = self.bus.retry_backoff_ms / 1000
        try:
            with trace.use_span(span, end_on_exit=False) if span is not None else contextlib.nullcontext():
                if isinstance(rows, Exception):
                    if span is not None:
                        span.set_status(Status(StatusCode.ERROR, str(rows)))
                    await self._dead_letter(record, rows)
                    return None
                if span is not None:
                    span.set_attributes({"mlops.model.name": rows.model, "mlops.monitor.rows": len(rows)})
                while True:
                    try:
                        return await self.core.prepare(
                            rows, partition=record.partition, traceparent=traceparent
                        )
                    except MlopsError as error:
                        if error.retryable or is_outage(error):
                            if self._stopping.is_set():
                                raise
                            log.warning(
                                "inference logs: offset %d waits for an outage: %s", record.offset, error
                            )
                            await asyncio.sleep(delay)
                            delay = min(delay * 2, self.bus.retry_backoff_max_ms / 1000)
                            continue
                        if span is not None:
                            span.set_status(Status(StatusCode.ERROR, error.message))
                        await self._dead_letter(record, error)
                        return None
                    except Exception as error:
                        if not is_outage(error):
                            # Not the broker's or the database's doing: something about this batch
                            # (or its version's profile) met a defect. The batch is set aside with the
                            # error's text, logged in full, and the next batches go on.
                            log.exception("inference logs: preparing offset %d failed", record.offset)
                            if span is not None:
                                span.set_status(Status(StatusCode.ERROR, str(error)))
                            await self._dead_letter(record, error)
                            return None
                        if self._stopping.is_set():
                            raise
                        log.warning("inference logs: offset %d waits for an outage: %s", record.offset, error)
                        await asyncio.sleep(delay)
                        delay = min(delay * 2, self.bus.retry_backoff_max_ms / 1000)
        finally:
            if span is not None:
                span.end()

    async def _dead_letter(self, record: ConsumerRecord, error: Exception) -> None:
        reason = error.message if isinstance(error, MlopsError) else f"{type(error).__name__}: {error}"
        headers = [
            (name, value or b"") for name, value in record.headers if not name.startswith("mlops_dlq_")
        ]
        headers += [
            ("mlops_dlq_reason", reason.encode()),
            ("mlops_dlq_error_type", type(error).__name__.encode()),
            ("mlops_dlq_attempts", b"1"),
            ("mlops_dlq_topic", record.topic.encode()),
            ("mlops_dlq_partition", str(record.partition).encode()),
            ("mlops_dlq_offset", str(record.offset).encode()),
            ("mlops_dlq_consumer", self.group.encode()),
            ("mlops_dlq_time", rfc3339().encode()),
        ]
        log.error("dead-lettering %s offset %d: %s", record.topic, record.offset, reason)
        delay = self.bus.retry_backoff_ms / 1000
        while True:
            try:
                await self.publisher.publish_encoded(
                    record.topic + DLQ_SUFFIX, record.key, record.value or b"", headers
                )
                return
            except Exception as publishing:
                # The record is not dropped: the broker's outage is waited out like any other.
                if not is_outage(publishing) or self._stopping.is_set():
                    raise
                log.warning(
                    "inference logs: dead-lettering offset %d waits for an outage: %s",
                    record.offset,
                    publishing,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.bus.retry_backoff_max_ms / 1000)


def _decode_all(
    records: list[ConsumerRecord], prefix: str, *, now: float, max_skew_s: float
) -> list[BatchRows | Exception]:
    """Envelope and payload of every record, or why it cannot be counted. Decoding touches nothing
    but the record, so whatever it raises is that record's result, never the loop's."""
    results: list[BatchRows | Exception] = []
    for record in records:
        try:
            _, event = envelope.decode(
                topic=record.topic.removeprefix(prefix),
                partition=record.partition,
                offset=record.offset,
                timestamp_ms=record.timestamp,
                headers=record.headers,
                value=record.value,
                check=False,  # decode_batch checks every field itself, without a walk per record
            )
            results.append(decode_batch(event, now=now, max_skew_s=max_skew_s))
        except MlopsError as error:
            results.append(error)
        except Exception as error:  # a check decode_batch lacks: logged in full, the record set aside
            log.exception("inference logs: decoding offset %d failed", record.offset)
            results.append(error)
    return results


def _count_all(prepared: list[Prepared], store_predictions: bool) -> list[CountedBatch | Exception]:
    """Count every prepared batch. Counting is pure (no I/O), so what it raises comes from that
    batch's data and is its result: the batch goes to the dead-letter topic, the others are counted."""
    results: list[CountedBatch | Exception] = []
    for item in prepared:
        try:
            results.append(count_batch(item, store_predictions=store_predictions))
        except MlopsError as error:
            results.append(error)
        except Exception as error:  # a check decode_batch lacks: logged in full, the batch set aside
            log.exception("inference logs: counting a batch of %s failed", item.rows.model)
            results.append(error)
    return results
