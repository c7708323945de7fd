"""Inference logging off the request path: sampled, buffered, published as batches of records.

A request only appends a tuple to a bounded queue (or counts a drop when it is full); building the
`InferenceLogged` messages and publishing them happens in a task of its own, one message per model
with up to `log_batch_records` records, when the batch is full or its oldest record is
`log_flush_interval_ms` old. When Kafka is slow or down the queue fills and records are dropped
and counted (`mlops_inference_log_dropped_total`), and inference goes on at full speed.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from typing import NamedTuple

import numpy as np
from google.protobuf.timestamp_pb2 import Timestamp

from mlops.bus import EventPublisher
from mlops.events.v1 import common_pb2, monitoring_pb2
from mlops.settings import BusSettings, KafkaSettings
from services.inference import prometheus
from services.inference.batching import Outputs
from services.inference.core import CANARY, PRODUCTION, SHADOW, PredictionLog, Serving

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
    rows: np.ndarray | None
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
        rows: np.ndarray | None,
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
            for model, message in await _messages(entries, self.sampling_rate, self.server_id):
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


async def _messages(entries: list[_Entry], sampling_rate: float, server_id: str):
    """One InferenceLogged per model and per (feature names, class labels), in arrival order."""
    messages: dict[tuple, monitoring_pb2.InferenceLogged] = {}
    for position, entry in enumerate(entries, 1):
        if position % BUILD_SLICE == 0:
            await asyncio.sleep(0)
        spec = entry.serving.spec
        key = (entry.serving.model, spec.feature_names, spec.class_labels)
        message = messages.get(key)
        if message is None:
            message = messages[key] = monitoring_pb2.InferenceLogged(
                model=entry.serving.model,
                feature_names=spec.feature_names,
                class_labels=spec.class_labels,
                sampling_rate=sampling_rate,
                server_id=server_id,
            )
        _add_records(message.records, entry)
    return [(key[0], message) for key, message in messages.items()]


def _add_records(records, entry: _Entry) -> None:
    spec = entry.serving.spec
    arrived = _timestamp(entry.answered_wall_ns - entry.latency_us * 1000)
    role = ROLES.get(entry.role, common_pb2.SERVING_ROLE_UNSPECIFIED)
    if entry.rows is None or entry.outputs is None:
        records.add(
            request_id=entry.request_id,
            version=spec.version,
            timestamp=arrived,
            latency_us=entry.latency_us,
            error=entry.error or "failed",
            role=role,
        )
        return
    features = entry.rows.tolist()
    outputs = entry.outputs
    count = len(features)
    if "probabilities" in outputs:
        scores = outputs["probabilities"].tolist()
        labels = outputs.get("label")
        names = entry.serving.label_values
        indices = labels.tolist() if labels is not None else [int(np.argmax(s)) for s in scores]
        texts = [names[i] if 0 <= i < len(names) else str(i) for i in indices]
    else:
        scores = [[value] for value in outputs["prediction"].reshape(-1).tolist()]
        texts = [""] * count
    for row in range(count):
        records.add(
            request_id=entry.request_id if count == 1 else f"{entry.request_id}/{row}",
            version=spec.version,
            timestamp=arrived,
            features=features[row],
            outputs=scores[row],
            label=texts[row],
            latency_us=entry.latency_us,
            error=entry.error,
            role=role,
        )
