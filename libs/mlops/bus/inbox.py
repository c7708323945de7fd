"""The inbox: the ids of handled events, written in the same transaction as the change they caused."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import text
from sqlmodel.ext.asyncio.session import AsyncSession

from mlops.db import Database


class Inbox:
    """Per-schema de-duplication of events by CloudEvents id and consumer group."""

    def __init__(self, schema: str) -> None:
        self.schema = schema
        self._claim = text(
            f'INSERT INTO "{schema}".inbox (consumer, event_id) VALUES (:consumer, :event_id) '
            "ON CONFLICT DO NOTHING"
        )
        self._prune = text(
            f'DELETE FROM "{schema}".inbox WHERE ctid = ANY(ARRAY('
            f'SELECT ctid FROM "{schema}".inbox WHERE handled_at < now() - CAST(:age AS interval) '
            "LIMIT :batch FOR UPDATE SKIP LOCKED))"
        )

    async def claim(self, session: AsyncSession, *, consumer: str, event_id: str) -> bool:
        """True the first time `event_id` is seen by `consumer` (inside the caller's transaction)."""
        result = await session.exec(self._claim, params={"consumer": consumer, "event_id": event_id})
        return result.rowcount == 1

    async def prune(self, database: Database, older_than: timedelta, *, batch_size: int = 1_000) -> int:
        """Forget ids handled longer ago than any redelivery can come; returns how many went.

        Deleted `batch_size` rows per transaction, so that a large backlog never holds one long lock
        or bloats one transaction; rows another replica is deleting are skipped, not waited for.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        total = 0
        while True:
            async with database.transaction() as session:
                result = await session.exec(self._prune, params={"age": older_than, "batch": batch_size})
                deleted = result.rowcount
            total += deleted
            if deleted < batch_size:
                return total
