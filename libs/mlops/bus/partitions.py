"""One task per assigned partition, so that a slow or stuck partition holds up no other.

A partition's records are handled in order by its own task, from a backlog that holds at most
`limit` records: when it is full, the partition is paused at the consumer (Kafka stops returning
its records) until the task has taken them. After each run of records the task awaits what they
published and only then advances `acked`, the offset the consumer may commit for the partition.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable

from aiokafka import ConsumerRecord, TopicPartition

from mlops.bus.producer import deferred_deliveries

log = logging.getLogger(__name__)


class PartitionWorker:
    """Handles one partition's records in order; `acked` says how far it is safe to commit."""

    def __init__(
        self,
        tp: TopicPartition,
        *,
        handle: Callable[[ConsumerRecord], Awaitable[None]],
        pause: Callable[[TopicPartition], None],
        resume: Callable[[TopicPartition], None],
        limit: int,
        delay_s: float = 0.0,
    ) -> None:
        self.tp = tp
        self.acked: int | None = None
        """Offset of the last record handled whose publishes Kafka acknowledged."""
        self.closing = False
        self._first: int | None = None
        self._handle = handle
        self._pause = pause
        self._resume = resume
        self._limit = limit
        self._paused = False
        self._backlog: deque[ConsumerRecord] = deque()
        self._wake = asyncio.Event()
        self.task = asyncio.create_task(self._run(delay_s), name=f"partition {tp.topic}[{tp.partition}]")

    def put(self, records: list[ConsumerRecord]) -> None:
        """Queue records fetched for this partition (never blocks: a full backlog pauses the fetch)."""
        if self._first is None:
            self._first = records[0].offset
        self._backlog.extend(records)
        self._wake.set()
        if len(self._backlog) >= self._limit and not self._paused:
            self._paused = True
            self._pause(self.tp)

    @property
    def reread_from(self) -> int | None:
        """Where to read this partition again if the worker failed: the first record not acknowledged."""
        return self.acked + 1 if self.acked is not None else self._first

    @property
    def failure(self) -> BaseException | None:
        """What ended the worker on its own (not by `close`), if anything did."""
        if self.closing or not self.task.done() or self.task.cancelled():
            return None
        return self.task.exception()

    async def close(self, grace_s: float) -> None:
        """Stop after the record in hand and await its acknowledgements; past `grace_s`, cancel it.

        A cancelled record's transaction rolls back and it is not acknowledged, so it is read again
        by whoever owns the partition next.
        """
        self.closing = True
        self._wake.set()
        _, running = await asyncio.wait({self.task}, timeout=grace_s)
        if running:
            log.warning("partition %s did not finish its record in %.0fs; cancelled", self.tp, grace_s)
            self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)

    async def _run(self, delay_s: float) -> None:
        if delay_s:
            await asyncio.sleep(delay_s)  # back-off after a failure of this partition, not a readiness wait
        acking: asyncio.Task | None = None
        try:
            while not self.closing:
                if not self._backlog:
                    if acking is not None:
                        acking, previous = None, acking
                        await previous
                        continue  # records may have come while it was awaited
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                run = [self._backlog.popleft() for _ in range(min(len(self._backlog), self._limit))]
                if self._paused:
                    self._paused = False
                    self._resume(self.tp)
                last: int | None = None
                with deferred_deliveries() as pending:
                    for record in run:
                        if self.closing:
                            break  # the rest is not acknowledged: it is read again
                        await self._handle(record)
                        last = record.offset
                if last is None:
                    continue
                # This run's acknowledgements overlap the next run's handling; they are awaited in order.
                if acking is not None:
                    acking, previous = None, acking
                    await previous
                acking = asyncio.create_task(self._acknowledge(pending, last))
        except BaseException:
            if acking is not None:
                acking.cancel()
            raise
        if acking is not None:
            await acking

    async def _acknowledge(self, pending: list[asyncio.Future], last: int) -> None:
        if pending:
            await asyncio.gather(*pending)
        self.acked = last
