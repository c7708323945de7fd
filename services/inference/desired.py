"""Reading the desired serving state: the compacted topic `mlops.deployments.desired`, whole, by every replica.

No consumer group: each replica assigns itself every partition and reads from the beginning, so
that any number of replicas converge on the same state (the latest record per model). A record is
handled under a CONSUMER span that continues the deployer's trace; loading a version is a child of
it. A tombstone (null value) stops serving its model. A record that cannot be parsed, and a state
that cannot be served (an artifact whose sha256 does not match, bytes that are no model, a permanent
store error), go to the dead-letter topic with the reason, and the reader moves on: what served
before keeps serving.
"""

from __future__ import annotations

import asyncio
import logging
import time

from aiokafka import AIOKafkaConsumer, ConsumerRecord
from aiokafka.errors import KafkaError
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind

from mlops import envelope as envelopes
from mlops.bus import EventPublisher, ensure_topics, partitions_of
from mlops.bus.tracing import extract, start_span
from mlops.envelope import MalformedEvent, rfc3339
from mlops.event_catalog import DLQ_SUFFIX, spec_for
from mlops.events.v1 import common_pb2, deployment_pb2
from mlops.settings import BusSettings, KafkaSettings
from services.inference.core import CANARY, PRODUCTION, SHADOW, InferenceCore, ModelState, VersionSpec

log = logging.getLogger(__name__)

ROLES = {
    common_pb2.SERVING_ROLE_PRODUCTION: PRODUCTION,
    common_pb2.SERVING_ROLE_CANARY: CANARY,
    common_pb2.SERVING_ROLE_SHADOW: SHADOW,
}


def model_state(event: deployment_pb2.DesiredState) -> ModelState:
    """The core's view of a DesiredState; an unset role is production when it has traffic. A version
    with no feature names (a model registered without a data set) takes its graph's inputs by their
    names."""
    versions = []
    for v in event.versions:
        role = ROLES.get(v.role) or (PRODUCTION if v.traffic_percent > 0 else SHADOW)
        if v.traffic_percent < 0 or v.traffic_percent > 100:
            raise MalformedEvent(
                f"version {v.version}: traffic_percent {v.traffic_percent} is not within 0-100"
            )
        versions.append(
            VersionSpec(
                version=v.version,
                artifact_uri=v.artifact_uri,
                artifact_sha256=v.artifact_sha256,
                traffic_percent=v.traffic_percent,
                role=role,
                task=v.task,
                feature_names=tuple(v.feature_names),
                class_labels=tuple(v.class_labels),
            )
        )
    return ModelState(
        model=event.model,
        generation=event.generation,
        versions=tuple(versions),
        max_batch_size=event.batching.max_batch_size,
        max_wait_us=event.batching.max_wait_us,
    )


class DesiredStateReader:
    def __init__(
        self,
        kafka: KafkaSettings,
        bus: BusSettings,
        core: InferenceCore,
        *,
        publisher: EventPublisher | None,
        client_id: str,
    ) -> None:
        self.kafka = kafka
        self.bus = bus
        self.core = core
        self.publisher = publisher
        self.client_id = client_id
        self.topic = bus.topic_prefix + spec_for(deployment_pb2.DesiredState).topic
        self._consumer: AIOKafkaConsumer | None = None
        self._caught_up = asyncio.Event()
        self._stopping = asyncio.Event()

    async def start(self) -> None:
        await ensure_topics(self.kafka, self.bus, [self.topic, self.topic + DLQ_SUFFIX])
        partitions = await partitions_of(self.kafka, self.topic)
        deadline = time.monotonic() + self.kafka.request_timeout_ms / 1000
        while not partitions:  # a topic created a moment ago may not be described yet
            if time.monotonic() > deadline:
                raise TimeoutError(f"topic {self.topic} has no partitions")
            await asyncio.sleep(0.2)
            partitions = await partitions_of(self.kafka, self.topic)
        consumer = AIOKafkaConsumer(
            **self.kafka.client_options(),
            group_id=None,
            client_id=self.client_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
        )
        await consumer.start()
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        self._consumer = consumer
        self._ends = await consumer.end_offsets(partitions)

    async def wait_caught_up(self, timeout_s: float | None = None) -> None:
        """Return once every record that existed at start() has been applied."""
        await asyncio.wait_for(self._caught_up.wait(), timeout_s)

    async def run(self) -> None:
        assert self._consumer is not None, "start() first"
        consumer = self._consumer
        try:
            while not self._stopping.is_set():
                await self._check_caught_up(consumer)
                try:
                    batch = await consumer.getmany(timeout_ms=self.bus.poll_timeout_ms)
                except KafkaError as error:
                    log.warning("desired state: %s; reading on", error)
                    await asyncio.sleep(self.bus.retry_backoff_ms / 1000)
                    continue
                for records in batch.values():
                    for record in records:
                        await self._handle(record)
        finally:
            await consumer.stop()

    async def _check_caught_up(self, consumer: AIOKafkaConsumer) -> None:
        if self._caught_up.is_set():
            return
        for tp, end in self._ends.items():
            if await consumer.position(tp) < end:
                return
        self._caught_up.set()

    async def stop(self) -> None:
        self._stopping.set()

    async def _handle(self, record: ConsumerRecord) -> None:
        span = start_span(f"process {record.topic}", extract(record.headers or ()), SpanKind.CONSUMER)
        token = otel_context.attach(trace.set_span_in_context(span))
        try:
            if span.is_recording():
                span.set_attributes(
                    {
                        "messaging.system": "kafka",
                        "messaging.operation.type": "process",
                        "messaging.destination.name": record.topic,
                        "messaging.destination.partition.id": str(record.partition),
                        "messaging.kafka.offset": record.offset,
                        "messaging.kafka.message.key": (record.key or b"").decode("utf-8", "replace"),
                    }
                )
            await self._apply(record, span)
        except Exception as error:
            span.record_exception(error)
            span.set_status(trace.Status(trace.StatusCode.ERROR, f"{type(error).__name__}: {error}"))
            log.exception("desired state at %s offset %d could not be applied", record.topic, record.offset)
        finally:
            otel_context.detach(token)
            span.end()

    async def _apply(self, record: ConsumerRecord, span) -> None:
        key = (record.key or b"").decode("utf-8", "replace")
        if record.value is None:
            span.set_attribute("mlops.model.name", key)
            self.core.remove(key)
            return
        try:
            _, event = envelopes.decode(
                topic=record.topic.removeprefix(self.bus.topic_prefix),
                partition=record.partition,
                offset=record.offset,
                timestamp_ms=record.timestamp,
                headers=record.headers or (),
                value=record.value,
            )
            assert isinstance(event, deployment_pb2.DesiredState)
            if key and event.model != key:
                raise MalformedEvent(f"record key {key!r} differs from the state's model {event.model!r}")
            if not event.model:
                raise MalformedEvent("the desired state names no model")
            state = model_state(event)
        except MalformedEvent as error:
            log.error(
                "desired state at %s offset %d is malformed: %s", record.topic, record.offset, error.message
            )
            await self._dead_letter(record, error.message, type(error).__name__)
            span.set_status(trace.Status(trace.StatusCode.ERROR, error.message))
            return
        span.set_attributes(
            {"mlops.model.name": state.model, "mlops.deployment.generation": state.generation}
        )
        outcome = await self.core.apply(state)
        span.set_attribute("mlops.deployment.outcome", outcome.kind)
        if outcome.kind == "refused":
            await self._dead_letter(record, outcome.reason, outcome.error_type)

    async def _dead_letter(self, record: ConsumerRecord, reason: str, error_type: str) -> None:
        if self.publisher is None:
            return
        headers = [
            (name, value or b"")
            for name, value in (record.headers or ())
            if not name.startswith("mlops_dlq_")
        ]
        headers += [
            ("mlops_dlq_reason", reason.encode()),
            ("mlops_dlq_error_type", error_type.encode()),
            ("mlops_dlq_attempts", b"1"),
            ("mlops_dlq_topic", record.topic.encode()),
            ("mlops_dlq_partition", str(record.partition).encode()),
            ("mlops_dlq_offset", str(record.offset).encode()),
            ("mlops_dlq_consumer", self.client_id.encode()),
            ("mlops_dlq_time", rfc3339().encode()),
        ]
        try:
            await self.publisher.publish_encoded(
                record.topic + DLQ_SUFFIX, record.key, record.value or b"", headers
            )
        except Exception as failure:
            log.warning(
                "dead letter for %s offset %d not published: %r", record.topic, record.offset, failure
            )
