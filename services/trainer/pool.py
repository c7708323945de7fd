"""Worker processes for training that outlive the death of a worker, and stop a run past its time.

A `ProcessPoolExecutor` whose process dies (the OOM killer's SIGKILL, a crash in a native library)
marks itself broken for good: every later submit raises `BrokenProcessPool`. Each slot here owns a
one-process executor and replaces it the moment it breaks or has to be stopped, so the next run
finds a working process, and one slot's death never touches the run of another slot. The
executor has no public way to stop a busy worker; a run past its time limit is stopped by killing
its process, then the slot is replaced the same way.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import signal
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from functools import partial
from typing import Any

log = logging.getLogger(__name__)

_JOIN_S = 30.0
"""How long a dead worker may take to be reaped; a SIGKILLed process in uninterruptible I/O dies late."""


class WorkerKilled(Exception):
    """The worker process died while it ran the call (killed by a signal, or exited)."""

    def __init__(self, exitcode: int | None) -> None:
        self.exitcode = exitcode
        self.reason = describe_exit(exitcode)
        super().__init__(self.reason)


class RunTimedOut(Exception):
    """The call ran past its time limit; its worker process was killed."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        super().__init__(f"still running after {timeout_s:.3g} s")


def describe_exit(exitcode: int | None) -> str:
    """A dead worker's exit code, in words: 'worker killed by signal 9 (SIGKILL)'."""
    if exitcode is None:
        return "worker process died (exit status unknown)"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = "unknown signal"
        return f"worker killed by signal {-exitcode} ({name})"
    return f"worker exited with status {exitcode}"


def _ready() -> None:
    """Submitted to a new executor so that its process starts (and imports torch) before a run needs it."""


class TrainingSlot:
    """One worker process that runs one call at a time; replaced when it dies or is stopped."""

    def __init__(self, make: Callable[[], ProcessPoolExecutor]) -> None:
        self._make = make
        self._executor = make()
        self._stopped = False
        self.replacements = 0
        """How often the process was replaced (died or stopped); for logs and tests."""

    def pids(self) -> list[int]:
        return [process.pid for process in self._processes() if process.pid is not None]

    def _processes(self) -> list:
        return _processes_of(self._executor)

    async def run(self, fn: Callable[..., Any], *args: Any, timeout_s: float | None = None) -> Any:
        """`fn(*args)` in the worker process; WorkerKilled or RunTimedOut when the process is lost."""
        if any(not process.is_alive() for process in self._processes()):
            # The process died while idle (nothing of a call was lost): replace it before it is used.
            log.warning("a training worker died while idle; starting a new one")
            await self._replace()
        # Taken before and after the submission: the executor's manager thread forgets its processes
        # as soon as it sees one die, which may be before this line runs again.
        before = self._processes()
        try:
            future = self._executor.submit(fn, *args)
        except BrokenProcessPool:
            log.warning("a training worker died while idle; starting a new one")
            await self._replace()
            before = self._processes()
            future = self._executor.submit(fn, *args)
        processes = list({id(p): p for p in [*before, *self._processes()]}.values())
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), timeout_s)
        except BrokenProcessPool as error:
            await asyncio.to_thread(lambda: [p.join(_JOIN_S) for p in processes])
            codes = [p.exitcode for p in processes if p.exitcode not in (None, 0)]
            killed = WorkerKilled(codes[0] if codes else None)
            log.warning("%s while running %s; starting a new worker", killed.reason, _name(fn))
            await self._replace()
            raise killed from error
        except TimeoutError:
            log.warning("%s ran past %.3g s; killing its worker", _name(fn), timeout_s)
            await self._replace()
            raise RunTimedOut(timeout_s or 0.0) from None

    async def _replace(self) -> None:
        old = self._executor
        await _kill(old)
        if self._stopped:
            return
        self._executor = self._make()
        self.replacements += 1
        self._executor.submit(_ready)

    async def stop(self) -> None:
        """Stop the worker now: a run in flight is abandoned (its job goes back to the queue)."""
        self._stopped = True
        await _kill(self._executor)


def _processes_of(executor: ProcessPoolExecutor) -> list:
    # Private, but the executor has no public view of its processes, and stopping a busy one
    # (time limit, shutdown) or naming how one died needs them.
    return list((getattr(executor, "_processes", None) or {}).values())


async def _kill(executor: ProcessPoolExecutor) -> None:
    processes = _processes_of(executor)
    for process in processes:
        if process.is_alive():
            process.kill()
    executor.shutdown(wait=False, cancel_futures=True)
    await asyncio.to_thread(lambda: [p.join(_JOIN_S) for p in processes])


def _name(fn: Callable[..., Any]) -> str:
    return getattr(fn, "__name__", repr(fn))


def spawned_executor(initializer: Callable[..., None] | None = None, *initargs: Any) -> ProcessPoolExecutor:
    """A one-process executor. Spawned, not forked: a fork would copy the event loop, the gRPC and
    Kafka clients and their threads into the child, and CUDA refuses to start in a fork."""
    return ProcessPoolExecutor(
        max_workers=1,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=initializer,
        initargs=initargs,
    )


class TrainingPool:
    """`size` slots, one per training job that may run at once."""

    def __init__(self, size: int, make: Callable[[], ProcessPoolExecutor] | None = None) -> None:
        self.slots = [TrainingSlot(make or partial(spawned_executor)) for _ in range(size)]

    async def stop(self) -> None:
        await asyncio.gather(*(slot.stop() for slot in self.slots))
