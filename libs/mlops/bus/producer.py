"""Publishing events: CloudEvents headers, a PRODUCER span per event, idempotent aiokafka producer."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from aiokafka import AIOKafkaProducer
from google.protobuf.message import Message
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import SpanKind

from mlops import envelope
from mlops.bus import metrics
from mlops.bus.tracing import inject, start_span
from mlops.event_catalog import spec_for
from mlops.settings import BusSettings, KafkaSettings

# While a consumer handles a batch, publishes only enqueue; the consumer awaits every delivery
# before it commits the batch's offsets, so a relay is at-least-once without a round trip per event.
_deliveries: ContextVar[list[asyncio.Future] | None] = ContextVar("mlops_bus_deliveries", default=None)


_MAX_CACHED_TOPICS = 1024
"""Metric children kept per publisher; topics past that are looked up each time (outbox rows name any)."""


@contextmanager
def deferred_deliveries() -> Iterator[list[asyncio.Future]]:
    pending: list[asyncio.Future] = []
    token = _deliveries.set(pending)
    try:
        yield pending
    finally:
        _deliveries.reset(token)


class EventPublisher:
    """Publishes platform events to their topics. One per service; start() before use."""

    def __init__(self, kafka: KafkaSettings, bus: BusSettings, *, source: str) -> None:
        self.source = source
        self.kafka = kafka
        self.topic_prefix = bus.topic_prefix
        self._published: dict[str, object] = {}
        self._producer = AIOKafkaProducer(
            **kafka.client_options(),
            client_id=source,
            enable_idempotence=True,
            acks="all",
            linger_ms=bus.linger_ms,
            max_batch_size=1 << 20,
        )

    async def start(self) -> None:
        await self._producer.start()

    async def stop(self) -> None:
        await self._producer.stop()

    async def publish(
        self,
        event: Message,
        *,
        key: str | None = None,
        event_id: str | None = None,
        content_type: str = envelope.PROTOBUF,
        extra_headers: Iterable[tuple[str, str]] = (),
    ) -> None:
        """Publish one event under a PRODUCER span that is a child of the current span."""
        spec = spec_for(event)
        value, headers = envelope.encode(
            event, spec, source=self.source, event_id=event_id, content_type=content_type, extra=extra_headers
        )
        await self.publish_encoded(
            self.topic_prefix + spec.topic, key if key is not None else spec.key_of(event), value, headers
        )

    async def publish_encoded(
        self,
        topic: str,
        key: str | bytes | None,
        value: bytes,
        headers: list[tuple[str, bytes]],
        parent: Context | None = None,
    ) -> None:
        """Publish a record whose envelope is already built (outbox rows, dead letters).

        The PRODUCER span is started with `start_span` and never made current: nothing runs inside
        it but `send`, and its context goes into the headers explicitly. Its attributes are only
        built when it is recorded (sampled), so an unsampled record pays for little beyond the ids.
        """
        key_bytes = key.encode() if isinstance(key, str) else key
        span = start_span(f"publish {topic}", parent, SpanKind.PRODUCER)
        try:
            if span.is_recording():
                span.set_attributes(self._attributes(topic, key_bytes, headers))
            delivery = await self._producer.send(
                topic, value=value, key=key_bytes, headers=inject(headers, span)
            )
            counter = self._published.get(topic)
            if counter is None:
                counter = metrics.PUBLISHED.labels(topic)
                if len(self._published) < _MAX_CACHED_TOPICS:
                    self._published[topic] = counter
            counter.inc()
            pending = _deliveries.get()
            if pending is not None:
                pending.append(delivery)
                return
            await delivery
        except Exception as error:
            if span.is_recording():
                span.record_exception(error)
                span.set_status(trace.Status(trace.StatusCode.ERROR, f"{type(error).__name__}: {error}"))
            raise
        finally:
            span.end()

    def _attributes(self, topic: str, key_bytes: bytes | None, headers: list[tuple[str, bytes]]) -> dict:
        attributes = {
            "messaging.system": "kafka",
            "messaging.operation.type": "send",
            "messaging.operation.name": "publish",
            "messaging.destination.name": topic,
            "messaging.client.id": self.source,
        }
        if key_bytes is not None:
            attributes["messaging.kafka.message.key"] = key_bytes.decode("utf-8", "replace")
        for name, raw in headers:
            if name == "ce_id":
                attributes["messaging.message.id"] = raw.decode()
        return attributes

    async def cluster_reachable(self) -> bool:
        """Whether a broker answers a metadata request now (tells a missing topic from a missing broker)."""
        return bool(await self._producer.client.force_metadata_update())

    async def flush(self) -> None:
        await self._producer.flush()
