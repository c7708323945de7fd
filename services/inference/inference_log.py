"""Inference logging off the request path: sampled, buffered, published as batches of records.

A request only appends a tuple to a bounded queue (or counts a drop when it is full); building the
`InferenceLogged` messages and publishing them happens in a task of its own, one message per model
with up to `log_batch_records` requests, when the batch is full or its oldest record is
`log_flush_interval_ms` old. A request may carry thousands of rows, so messages are bounded by bytes
too (`log_max_message_bytes`, below the producer's largest request): a batch is split into as many
messages as it takes, and a single record over the bound is dropped. When Kafka is slow or down the
queue fills and records are dropped. Every drop is counted (`mlops_inference_log_dropped_total`, by
reason), and inference goes on at full speed.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter, deque
from typing import NamedTuple

from google.protobuf.timestamp_pb2 import Timestamp

from mlops.bus import EventPublisher
from mlops.events.v1 import common_pb2, monitoring_pb2
from mlops.settings import BusSettings, KafkaSettings
from services.inference import prometheus
from services.inference.batching import Outputs
from services.inference.core import CANARY, PRODUCTION, SHADOW, PredictionLog, Serving
from services.inference.runtime import Rows, row_count

log = logging.getLogger(__name__)

ROLES = {
    PRODUCTION: common_pb2.SERVING_ROLE_PRODUCTION,
    CANARY: common_pb2.SERVING_ROLE_CANARY,
    SHADOW: common_pb2.SERVING_ROLE_SHADOW,
}


class _Entry(NamedTuple):
    serving: Serving
    role: str
    request_id: str
    answered_wall_ns: int
    queued_at: float
    rows: Rows | None
    outputs: Outputs | None
    latency_us: int
    error: str


class InferenceLogger(PredictionLog):
    def __init__(
        self,
        kafka: KafkaSettings,
        bus: BusSettings,
        *,
        source: str,
        server_id: str,
        sampling_rate: float = 1.0,
        batch_records: int = 500,
        flush_interval_ms: int = 1_000,
        queue_size: int = 20_000,
        publish_timeout_s: float = 10.0,
        start_retry_s: float = 2.0,
        max_message_bytes: int = 512 * 1024,
    ) -> None:
        self.kafka = kafka
        self.bus = bus
        self.source = source
        self.server_id = server_id
        self.sampling_rate = sampling_rate
        self.batch_records = batch_records
        self.flush_interval_s = flush_interval_ms / 1000
        self.queue_size = queue_size
        self.publish_timeout_s = publish_timeout_s
        self.start_retry_s = start_retry_s
        self.max_message_bytes = max_message_bytes
        self._queue: deque[_Entry] = deque()
        self._wake = asyncio.Event()
        self._stopping = False
        self._publisher: EventPublisher | None = None
        self._dropped: dict[tuple[str, str], object] = {}

    # --- the request path: no await, no I/O -----------------------------------------------------

    def sampled(self) -> bool:
        return self.sampling_rate >= 1.0 or random.random() < self.sampling_rate

    def record(
        self,
        serving: Serving,
        role: str,
        request_id: str,
        arrived_ns: int,
        rows: Rows | None,
        outputs: Outputs | None,
        latency_us: int,
        error: str = "",
    ) -> None:
        queue = self._queue
        if len(queue) >= self.queue_size:
            self._drop(serving.model, "queue_full", 1)
            return
        queue.append(
            _Entry(
                serving, role, request_id, time.time_ns(), time.monotonic(), rows, outputs, latency_us, error
            )
        )
        if len(queue) >= self.batch_records or len(queue) == 1:
            self._wake.set()

    def _drop(self, model: str, reason: str, count: int) -> None:
        counter = self._dropped.get((model, reason))
        if counter is None:
            counter = self._dropped[(model, reason)] = prometheus.LOG_DROPPED.labels(model, reason)
        counter.inc(count)

    # --- the logger's own task --------------------------------------------------------------------

    async def run(self) -> None:
        """Connect (retrying while Kafka is unreachable, records meanwhile queue and then drop), then
        publish batches until stop()."""
        while self._publisher is None and not self._stopping:
            publisher = EventPublisher(self.kafka, self.bus, source=self.source)
            try:
                await asyncio.wait_for(publisher.start(), self.publish_timeout_s)
                self._publisher = publisher
            except Exception as error:
                log.warning("inference log: Kafka unreachable (%s); records are dropped meanwhile", error)
                await _quietly_stop(publisher)
                self._discard_overdue()
                await asyncio.sleep(self.start_retry_s)
        while not self._stopping:
            await self._wait_for_batch()
            await self._publish_ready(flush=False)
        if self._publisher is None:  # stopped before Kafka was ever reached
            while self._queue:
                self._drop(self._queue.popleft().serving.model, "publish_failed", 1)
            return
        await self._publish_ready(flush=True)

    async def stop(self) -> None:
        """Publish what is buffered (within the publish timeout), then close the producer."""
        self._stopping = True
        self._wake.set()

    async def close(self) -> None:
        if self._publisher is not None:
            await _quietly_stop(self._publisher)

    def _discard_overdue(self) -> None:
        """While no producer exists, records older than a publish timeout go (counted)."""
        now = time.monotonic()
        while self._queue and now - self._queue[0].queued_at > self.publish_timeout_s:
            entry = self._queue.popleft()
            self._drop(entry.serving.model, "publish_failed", 1)

    async def _wait_for_batch(self) -> None:
        queue = self._queue
        while not self._stopping:
            if len(queue) >= self.batch_records:
                return
            if queue:
                remaining = self.flush_interval_s - (time.monotonic() - queue[0].queued_at)
                if remaining <= 0:
                    return
            else:
                remaining = None
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), remaining)
            except TimeoutError:
                pass

    async def _publish_ready(self, *, flush: bool) -> None:
        queue = self._queue
        while queue:
            count = min(len(queue), self.batch_records)
            if (
                not flush
                and count < self.batch_records
                and time.monotonic() - queue[0].queued_at < self.flush_interval_s
            ):
                return
            entries = [queue.popleft() for _ in range(count)]
            messages, shed = await _messages(
                entries, self.sampling_rate, self.server_id, max_bytes=self.max_message_bytes
            )
            for model, records in shed.items():
                log.warning(
                    "inference log: %d records of %s over %d bytes each dropped",
                    records,
                    model,
                    self.max_message_bytes,
                )
                self._drop(model, "record_too_large", records)
            for model, message in messages:
                await self._publish(model, message)
            if not flush:
                return

    async def _publish(self, model: str, message: monitoring_pb2.InferenceLogged) -> None:
        records = len(message.records)
        assert self._publisher is not None
        try:
            await asyncio.wait_for(self._publisher.publish(message), self.publish_timeout_s)
        except Exception as error:
            log.warning("inference log: %d records of %s dropped: %r", records, model, error)
            self._drop(model, "publish_failed", records)
            return
        prometheus.LOG_RECORDS.labels(model).inc(records)


async def _quietly_stop(publisher: EventPublisher) -> None:
    try:
        await asyncio.wait_for(publisher.stop(), 5)
    except Exception as error:
        log.debug("inference log producer stop: %r", error)


def _timestamp(wall_ns: int) -> Timestamp:
    return Timestamp(seconds=wall_ns // 1_000_000_000, nanos=wall_ns % 1_000_000_000)


BUILD_SLICE = 32
"""Entries turned into records between two yields to the event loop: building a full batch at once
held requests up for milliseconds, which showed in the p99."""


RECORD_OVERHEAD = 72
"""Bytes a record may take besides its features, outputs and strings: the integers at their largest
varint (version and latency 11 each, timestamp 19, role 6), a tag and a 3-byte length for each of the
five variable fields and for the record itself in the message (3 bytes hold lengths up to 2 MiB, over
any message this logger makes). With it a record's size is bounded without serialising it."""


def _record_bound(fields: dict) -> int:
    numbers = len(fields.get("features", ())) + len(fields.get("outputs", ()))
    strings = sum(len(fields.get(name, "").encode()) for name in ("request_id", "label", "error"))
    texts = sum(4 + len(text.encode()) for text in fields.get("text_features", ()))
    return RECORD_OVERHEAD + 8 * numbers + strings + texts


async def _messages(
    entries: list[_Entry], sampling_rate: float, server_id: str, *, max_bytes: int
) -> tuple[list[tuple[str, monitoring_pb2.InferenceLogged]], Counter]:
    """InferenceLogged messages of at most `max_bytes`, one series per model and per (feature names,
    class labels), records in arrival order; and the count of records per model that were too large
    for any message."""
    done: list[tuple[str, monitoring_pb2.InferenceLogged]] = []
    open_messages: dict[tuple, list] = {}  # key -> [message, size bound, size of the message without records]
    shed: Counter = Counter()
    for position, entry in enumerate(entries, 1):
        if position % BUILD_SLICE == 0:
            await asyncio.sleep(0)
        model = entry.serving.model
        interface = entry.serving.interface
        assert interface is not None
        key = (model, interface.numeric_features, interface.text_features, interface.class_labels)
        for fields in _record_fields(entry):
            size = _record_bound(fields)
            current = open_messages.get(key)
            if current is not None and current[1] + size > max_bytes:
                done.append((model, current[0]))
                current = None
            if current is None:
                message = monitoring_pb2.InferenceLogged(
                    model=model,
                    feature_names=interface.numeric_features,
                    text_feature_names=interface.text_features,
                    class_labels=interface.class_labels,
                    sampling_rate=sampling_rate,
                    server_id=server_id,
                )
                header = message.ByteSize()
                current = open_messages[key] = [message, header, header]
            if current[2] + size > max_bytes:
                shed[model] += 1
                continue
            current[0].records.add(**fields)
            current[1] += size
    done.extend((key[0], current[0]) for key, current in open_messages.items() if current[0].records)
    return done, shed


def _record_fields(entry: _Entry):
    """The fields of each record of an entry: one per row, or one for a failed request."""
    spec = entry.serving.spec
    arrived = _timestamp(entry.answered_wall_ns - entry.latency_us * 1000)
    role = ROLES.get(entry.role, common_pb2.SERVING_ROLE_UNSPECIFIED)
    if entry.rows is None or entry.outputs is None:
        yield {
            "request_id": entry.request_id,
            "version": spec.version,
            "timestamp": arrived,
            "latency_us": entry.latency_us,
            "error": entry.error or "failed",
            "role": role,
        }
        return
    interface = entry.serving.interface
    assert interface is not None
    count = row_count(entry.rows)
    features, text_features = interface.logged_inputs(entry.rows)
    scores, texts = interface.logged_outputs(entry.outputs, count)
    for row in range(count):
        fields = {
            "request_id": entry.request_id if count == 1 else f"{entry.request_id}/{row}",
            "version": spec.version,
            "timestamp": arrived,
            "features": features[row],
            "outputs": scores[row],
            "label": texts[row],
            "latency_us": entry.latency_us,
            "error": entry.error,
            "role": role,
        }
        if text_features is not None:
            fields["text_features"] = text_features[row]
        yield fields
