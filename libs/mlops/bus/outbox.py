"""The transactional outbox and its relay.

`Outbox.add` writes an event into the service's schema inside the caller's transaction, so the
event exists if and only if the state change committed. `OutboxRelay` publishes committed rows in
order and deletes them once Kafka has acknowledged them; a crash in between republishes with the
same `ce_id`, which consumers' inboxes de-duplicate. Commits wake the relay through NOTIFY.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging

from aiokafka.errors import KafkaError
from google.protobuf.message import Message
from sqlalchemy import text
from sqlmodel.ext.asyncio.session import AsyncSession

from mlops.bus import envelope, metrics
from mlops.bus.catalog import spec_for
from mlops.bus.producer import EventPublisher, deferred_deliveries
from mlops.bus.tracing import context_from_text, current_traceparent
from mlops.db import Database
from mlops.outages import is_outage
from mlops.settings import BusSettings

log = logging.getLogger(__name__)


def _channel(schema: str) -> str:
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
        self._notify = text(f"SELECT pg_notify('{_channel(schema)}', '')")

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


class OutboxRelay:
    """Publishes one schema's outbox. Several replicas may run it; an advisory lock elects one."""

    def __init__(self, database: Database, schema: str, publisher: EventPublisher, bus: BusSettings) -> None:
        self.database = database
        self.schema = schema
        self.publisher = publisher
        self.bus = bus
        self._stopping = asyncio.Event()
        self._wake = asyncio.Event()
        self.leader = asyncio.Event()
        """Set once this replica holds the relay lock."""

    async def stop(self) -> None:
        self._stopping.set()
        self._wake.set()

    async def run(self) -> None:
        """Relay until stop(), riding out database and broker outages: reconnect, re-elect, go on."""
        backoff = self.bus.retry_backoff_ms / 1000
        while not self._stopping.is_set():
            try:
                await self._lead_and_relay()
                backoff = self.bus.retry_backoff_ms / 1000
            except Exception as error:
                if not (isinstance(error, KafkaError) or is_outage(error)):
                    raise
                self.leader.clear()
                log.warning("outbox relay of %s paused: %s; retrying in %.1fs", self.schema, error, backoff)
                await self._sleep(backoff)
                backoff = min(backoff * 2, self.bus.retry_backoff_max_ms / 1000)

    async def _lead_and_relay(self) -> None:
        connection = await self.database.raw_connection()
        try:
            while not self._stopping.is_set():
                if await connection.fetchval(
                    "SELECT pg_try_advisory_lock(hashtext($1))", f"outbox:{self.schema}"
                ):
                    break
                await self._sleep(self.bus.outbox_poll_interval_ms / 1000)
            else:
                return
            self.leader.set()
            await connection.add_listener(_channel(self.schema), lambda *_: self._wake.set())
            while not self._stopping.is_set():
                published = await self.relay_once(connection)
                if published < self.bus.outbox_batch_size:
                    await self._sleep(self.bus.outbox_poll_interval_ms / 1000)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(connection.close(), 5)

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)
        self._wake.clear()

    async def relay_once(self, connection) -> int:
        """Publish up to one batch of rows in id order, wait for every ack, then delete them."""
        rows = await connection.fetch(
            f'SELECT id, topic, key, value, headers FROM "{self.schema}".outbox ORDER BY id LIMIT $1',
            self.bus.outbox_batch_size,
        )
        metrics.OUTBOX_PENDING.labels(self.schema).set(len(rows))
        if not rows:
            return 0
        with deferred_deliveries() as pending:
            for row in rows:
                pairs = json.loads(row["headers"])
                parent = context_from_text(dict(pairs))
                headers = [(name, value.encode()) for name, value in pairs]
                await self.publisher.publish_encoded(
                    row["topic"], row["key"], row["value"], headers, parent=parent
                )
            await asyncio.gather(*pending)
        await connection.execute(
            f'DELETE FROM "{self.schema}".outbox WHERE id = ANY($1::bigint[])', [row["id"] for row in rows]
        )
        metrics.OUTBOX_RELAYED.labels(self.schema).inc(len(rows))
        return len(rows)
