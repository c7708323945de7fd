"""Dynamic batching: concurrent requests to one model version coalesce into one runtime call.

A worker per version takes the first waiting request, adds whatever else waits (up to
`max_batch_size` rows), and, if the batch is not full, waits at most `max_wait_us` for more. A call
of a model that is not cheap runs on a thread pool; while it runs, new requests queue up and form
the next batch, so under load batches grow by themselves even with no wait at all.

Where a call runs. A small model answers in microseconds, less than the hop to a thread and back
costs (waking the thread, handing the GIL over, waking the event loop): for those, a call whose
recent mean duration is under `inline_below_us` runs on the event loop itself (measured on the wine
model: a fifth more requests per second at 64 callers, a quarter more with one). With no wait
configured, such a call runs at once, in its request's turn: requests only queue up while a call
runs on a thread, so nothing would join it, and the batcher's hand-offs would cost more than the
model. Every call is timed, so a model that turns out slow moves to the threads within a few calls,
and one slow from its warm-up never blocks the loop.

Only requests of one layout merge: the same inputs, each of the same dtype and the same dimensions
after the first (a model fed several inputs gets them by name; a batch concatenates each).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor

import numpy as np

from mlops.errors import ResourceExhausted
from services.inference.runtime import Rows, row_count

Outputs = dict[str, np.ndarray]
INLINE_ROWS = 64
"""Largest call that may run on the event loop when batching allows less (a call's cost grows with rows)."""
CALL_WEIGHT = 0.1
"""Weight of the latest call in `Batcher.call_s`."""


class Batcher:
    def __init__(
        self,
        run: Callable[[Rows], Outputs],
        executor: Executor,
        *,
        max_batch_size: int,
        max_wait_us: int,
        observe_batch: Callable[[int], None],
        inline_below_us: int = 0,
        estimated_call_s: float | None = None,
        max_pending: int = 1_000,
        name: str = "this version",
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        """`estimated_call_s`: what a call is expected to take (the warm-up's slowest); None times the
        first calls on the threads before any runs on the loop. `max_pending`: requests that may wait
        (queued for a batch or for a thread) before more are refused with RESOURCE_EXHAUSTED: the
        thread pool's own queue has no bound, and a caller is better told at once than after a minute.
        `clock`: what calls are timed with, in seconds."""
        self._run = run
        self._clock = clock
        self._executor = executor
        self.max_batch_size = max_batch_size
        self.max_wait_s = max(max_wait_us, 0) / 1_000_000
        self._observe = observe_batch
        self.inline_below_s = max(inline_below_us, 0) / 1_000_000
        self.inline_rows = max(max_batch_size, INLINE_ROWS)
        self.call_s = estimated_call_s
        """Mean duration of a call, recent ones weighing most."""
        self._queue: deque[tuple[Rows, asyncio.Future]] = deque()
        self._arrived = asyncio.Event()
        self._worker: asyncio.Task | None = None
        self._closed = False
        self.max_pending = max_pending
        self.name = name
        self._pending = 0

    @property
    def enabled(self) -> bool:
        return self.max_batch_size > 1

    def submit(self, rows: Rows) -> asyncio.Future[Outputs]:
        """Queue `rows` (synchronously: no await between routing and queueing) and return the answer's future."""
        loop = asyncio.get_running_loop()
        count = row_count(rows)
        inline = self.runs_inline(count)
        at_once = inline and not self._queue and not self.max_wait_s  # no one to join, no wait for others
        direct = self._closed or not self.enabled or count >= self.max_batch_size or at_once
        if direct and inline:
            future = loop.create_future()
            try:
                future.set_result(self._run_observed(rows))
            except Exception as error:
                future.set_exception(error)
            return future
        if self._pending >= self.max_pending:
            raise ResourceExhausted(
                f"{self.name} has {self._pending} requests waiting, at most {self.max_pending}; "
                "the server is overloaded, retry later"
            )
        self._pending += 1
        if direct:
            future = loop.run_in_executor(self._executor, self._run_observed, rows)
            future.add_done_callback(self._left)
            return future
        future = loop.create_future()
        future.add_done_callback(self._left)
        self._queue.append((rows, future))
        if self._worker is None:
            self._worker = asyncio.create_task(self._work(), name="batcher")
        self._arrived.set()
        return future

    def _left(self, _: asyncio.Future) -> None:
        self._pending -= 1

    def close(self) -> None:
        """Stop taking requests; those already queued are still answered."""
        self._closed = True
        self._arrived.set()

    def runs_inline(self, rows: int) -> bool:
        """Whether a call of `rows` rows runs on the event loop (cheap enough) rather than a thread."""
        mean = self.call_s
        return mean is not None and mean < self.inline_below_s and rows <= self.inline_rows

    def _run_observed(self, rows: Rows) -> Outputs:
        self._observe(row_count(rows))
        started = self._clock()
        try:
            return self._run(rows)
        finally:
            took = self._clock() - started
            mean = self.call_s
            self.call_s = took if mean is None else mean + (took - mean) * CALL_WEIGHT

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        queue = self._queue
        while True:
            if not queue:
                if self._closed:
                    return
                self._arrived.clear()
                await self._arrived.wait()
                continue
            batch = [queue.popleft()]
            count = row_count(batch[0][0])
            layout = _layout(batch[0][0])
            deadline = time.monotonic() + self.max_wait_s
            while count < self.max_batch_size:
                while (
                    queue
                    and count + row_count(queue[0][0]) <= self.max_batch_size
                    and _layout(queue[0][0]) == layout
                ):
                    item = queue.popleft()
                    batch.append(item)
                    count += row_count(item[0])
                if count >= self.max_batch_size or queue or self._closed:
                    break  # full, or the next one does not fit or does not match: it leads the next batch
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._arrived.clear()
                try:
                    await asyncio.wait_for(self._arrived.wait(), remaining)
                except TimeoutError:
                    pass
            await self._run_batch(loop, batch, count)

    async def _run_batch(self, loop, batch: list[tuple[Rows, asyncio.Future]], count: int) -> None:
        rows = batch[0][0] if len(batch) == 1 else _concatenate([item[0] for item in batch])
        try:
            if self.runs_inline(count):
                outputs = self._run_observed(rows)
            else:
                outputs = await loop.run_in_executor(self._executor, self._run_observed, rows)
        except Exception as error:
            for _, future in batch:
                if not future.done():
                    future.set_exception(error)
            return
        if len(batch) == 1:
            future = batch[0][1]
            if not future.done():
                future.set_result(outputs)
            return
        start = 0
        for part, future in batch:
            end = start + row_count(part)
            if not future.done():
                future.set_result({name: value[start:end] for name, value in outputs.items()})
            start = end


def _layout(rows: Rows) -> tuple:
    """What must agree for two requests to share a call: each input's name, dtype and inner dimensions."""
    if isinstance(rows, dict):
        return tuple((name, value.dtype, value.shape[1:]) for name, value in rows.items())
    return (rows.dtype, rows.shape[1:])


def _concatenate(parts: list[Rows]) -> Rows:
    first = parts[0]
    if isinstance(first, dict):
        return {name: np.concatenate([part[name] for part in parts]) for name in first}  # type: ignore[index]
    return np.concatenate(parts)  # type: ignore[arg-type]
