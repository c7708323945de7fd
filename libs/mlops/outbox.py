"""The transactional outbox, the writing side: events queued in the caller's transaction.

`Outbox.add` writes an event into the service's schema inside the caller's transaction, so the
event exists if and only if the state change committed, and wakes the relay through NOTIFY. The
relay that publishes the rows to Kafka is `mlops.bus.relay.OutboxRelay`; a core that queues events
needs only this module, which speaks neither Kafka nor gRPC.
"""

from __future__ import annotations

import json

from google.protobuf.message import Message
from sqlalchemy import text
from sqlmodel.ext.asyncio.session import AsyncSession

from mlops import envelope
from mlops.event_catalog import spec_for
from mlops.tracecontext import current_traceparent


def notify_channel(schema: str) -> str:
    """The NOTIFY channel on which commits to `schema`'s outbox wake its relay."""
    return f"mlops_outbox_{schema}"


class Outbox:
    """Writes events of one service (its `source`) into its schema's outbox table."""

    def __init__(self, schema: str, *, source: str, topic_prefix: str = "") -> None:
        self.schema = schema
        self.source = source
        self.topic_prefix = topic_prefix
        self._insert = text(
            f'INSERT INTO "{schema}".outbox (topic, key, value, headers) '
            "VALUES (:topic, :key, :value, CAST(:headers AS jsonb))"
        )
        self._notify = text(f"SELECT pg_notify('{notify_channel(schema)}', '')")

    async def add(self, session: AsyncSession, event: Message, *, key: str | None = None) -> str:
        """Queue `event` in the caller's transaction; returns its ce_id. The trace context is kept with it."""
        spec = spec_for(event)
        value, headers = envelope.encode(event, spec, source=self.source)
        rows = [[name, raw.decode()] for name, raw in headers]
        rows += [[name, value_] for name, value_ in current_traceparent().items()]
        await session.exec(
            self._insert,
            params={
                "topic": self.topic_prefix + spec.topic,
                "key": (key if key is not None else spec.key_of(event)).encode(),
                "value": value,
                "headers": json.dumps(rows),
            },
        )
        await session.exec(self._notify)
        return next(raw.decode() for name, raw in headers if name == "ce_id")
