"""The transactional outbox, the publishing side: the relay from a schema's outbox table to Kafka.

`mlops.outbox.Outbox.add` writes events in the caller's transaction. `OutboxRelay` publishes committed
rows in order and deletes them once Kafka has acknowledged them; a crash in between republishes with
the same `ce_id`, which consumers' inboxes de-duplicate. Commits wake the relay through NOTIFY.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from datetime import UTC, datetime

from aiokafka.errors import (
    CorruptRecordException,
    InvalidTopicError,
    KafkaConnectionError,
    KafkaError,
    MessageSizeTooLargeError,
    PolicyViolationError,
    RecordListTooLargeError,
    RecordTooLargeError,
    TopicAuthorizationFailedError,
    UnknownTopicOrPartitionError,
    UnsupportedForMessageFormatError,
)
from asyncpg import Record

from mlops.bus import metrics
from mlops.bus.admin import ensure_topics
from mlops.bus.deadletter import dead_letter_headers, reason_of
from mlops.bus.producer import EventPublisher, deferred_deliveries
from mlops.db import Database
from mlops.event_catalog import DLQ_SUFFIX
from mlops.outages import is_outage
from mlops.outbox import notify_channel
from mlops.settings import BusSettings
from mlops.tracecontext import context_from_text

log = logging.getLogger(__name__)


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
            await connection.add_listener(notify_channel(self.schema), lambda *_: self._wake.set())
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
        """Publish up to one batch of rows in id order, wait for every ack, then delete them.

        A row Kafka will never take (over the size limit, a topic that cannot exist, a record that
        does not serialise) goes to `<topic>.dlq` instead, so it cannot hold up the rows behind
        it; an outage raises and the whole batch is tried again later.
        """
        rows = await connection.fetch(
            f'SELECT id, topic, key, value, headers, created_at FROM "{self.schema}".outbox ORDER BY id LIMIT $1',
            self.bus.outbox_batch_size,
        )
        metrics.OUTBOX_PENDING.labels(self.schema).set(len(rows))
        oldest = rows[0].get("created_at") if rows else None
        metrics.OUTBOX_OLDEST_AGE.labels(self.schema).set(
            max((datetime.now(UTC) - oldest).total_seconds(), 0) if oldest is not None else 0
        )
        if not rows:
            return 0
        refused: list[tuple[Record, BaseException]] = []
        refused_topics: dict[str, BaseException] = {}  # one wait on an unknown topic per round, not per row
        sent: list[tuple[Record, asyncio.Future]] = []
        for row in rows:
            known = refused_topics.get(row["topic"])
            if known is not None:
                refused.append((row, known))
                continue
            try:
                sent.append((row, await self._send(row)))
            except Exception as error:
                await self._raise_unless_refused(error)
                refused.append((row, error))
                if _refuses_topic(error):
                    refused_topics[row["topic"]] = error
        results = await asyncio.gather(*(delivery for _, delivery in sent), return_exceptions=True)
        for (row, _), result in zip(sent, results, strict=True):
            if not isinstance(result, BaseException):
                continue
            await self._raise_unless_refused(result)
            # The broker refuses a whole batch for one bad record: a row that shared it goes again alone.
            try:
                await (await self._send(row))
            except Exception as error:
                await self._raise_unless_refused(error)
                refused.append((row, error))
        for row, error in refused:
            await self._dead_letter(row, error)
        await connection.execute(
            f'DELETE FROM "{self.schema}".outbox WHERE id = ANY($1::bigint[])', [row["id"] for row in rows]
        )
        metrics.OUTBOX_RELAYED.labels(self.schema).inc(len(rows) - len(refused))
        if refused:
            metrics.OUTBOX_DEAD_LETTERED.labels(self.schema).inc(len(refused))
        return len(rows)

    async def _send(self, row: Record) -> asyncio.Future:
        """Hand one row to the producer; the delivery is returned, not awaited."""
        pairs = _header_pairs(row["headers"])
        topic = row["topic"]
        if not _TOPIC_NAME.fullmatch(topic):
            raise InvalidTopicError(f"{topic!r} is not a valid Kafka topic name")
        parent = context_from_text(dict(pairs))
        headers = [(name, value.encode()) for name, value in pairs]
        with deferred_deliveries() as pending:
            await self.publisher.publish_encoded(topic, row["key"], row["value"], headers, parent=parent)
        return pending[0]

    async def _raise_unless_refused(self, error: BaseException) -> None:
        """Raise `error` unless it says this row can never be published (then it is dead-lettered)."""
        if isinstance(error, UnknownTopicOrPartitionError):
            # aiokafka says the same after a metadata wait whether the topic is missing or the broker
            # is: only a broker that answers proves the topic cannot be had.
            if await self.publisher.cluster_reachable():
                return
            raise KafkaConnectionError(f"no broker answered while looking up a topic: {error}") from error
        if isinstance(error, _REFUSED):
            return
        if isinstance(error, KafkaError | asyncio.CancelledError) or is_outage(error):
            raise error
        if not isinstance(error, Exception):
            raise error

    async def _dead_letter(self, row: Record, error: BaseException) -> None:
        topic = row["topic"]
        value = row["value"]
        reason = _reason(error, len(value))
        try:
            original = [(name, text_.encode()) for name, text_ in _header_pairs(row["headers"])]
        except ValueError:
            original = []  # the headers are what was wrong; the reason says so
        headers = dead_letter_headers(
            original,
            reason=reason,
            error_type=type(error).__name__,
            attempts=1,
            topic=topic,
            where=[("outbox", self.schema), ("outbox_id", str(row["id"]))],
        )
        if isinstance(error, _TOO_LARGE):
            value, headers = (
                b"",
                [*headers, ("mlops_dlq_value_omitted", f"{len(row['value'])} bytes".encode())],
            )
        log.error("outbox %s row %d dead-lettered: %s", self.schema, row["id"], reason)
        dead_letter_topic = topic + DLQ_SUFFIX
        if not _TOPIC_NAME.fullmatch(dead_letter_topic):
            # No `<topic>.dlq` can exist for a topic whose own name is invalid: the schema's catch-all.
            dead_letter_topic = f"{self.bus.topic_prefix}{UNDELIVERABLE_TOPIC}"
        await ensure_topics(self.publisher.kafka, self.bus, [dead_letter_topic])
        await self.publisher.publish_encoded(dead_letter_topic, row["key"], value, headers)


UNDELIVERABLE_TOPIC = "mlops.outbox" + DLQ_SUFFIX
"""Where a row goes whose topic cannot have a dead-letter twin (its name is not a valid topic)."""

_TOPIC_NAME = re.compile(r"[A-Za-z0-9._-]{1,249}")
_TOO_LARGE = (MessageSizeTooLargeError, RecordTooLargeError, RecordListTooLargeError)
_REFUSED = (
    *_TOO_LARGE,
    InvalidTopicError,
    TopicAuthorizationFailedError,
    PolicyViolationError,
    CorruptRecordException,
    UnsupportedForMessageFormatError,
)
"""Broker answers about the record itself: sending it again gives the same answer."""


def _refuses_topic(error: BaseException) -> bool:
    return isinstance(error, UnknownTopicOrPartitionError | InvalidTopicError | TopicAuthorizationFailedError)


def _header_pairs(raw: str) -> list[tuple[str, str]]:
    pairs = json.loads(raw)
    if not isinstance(pairs, list) or not all(
        isinstance(pair, list) and len(pair) == 2 and all(isinstance(part, str) for part in pair)
        for pair in pairs
    ):
        raise ValueError(f"outbox headers are not a list of [name, value] text pairs: {raw[:200]}")
    return [(name, value) for name, value in pairs]


def _reason(error: BaseException, size: int) -> str:
    if isinstance(error, _TOO_LARGE):
        return (
            f"record of {size} bytes is over Kafka's size limit (the producer's max_request_size "
            f"or the broker's message.max.bytes): {reason_of(error)}"
        )
    if isinstance(error, UnknownTopicOrPartitionError):
        return f"the topic does not exist and could not be created: {reason_of(error)}"
    return reason_of(error)
