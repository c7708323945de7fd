"""Running a service until it is told to stop, and stopping it within a deadline whatever is down."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable, Iterable

log = logging.getLogger(__name__)


async def wait_for_stop(tasks: Iterable[asyncio.Task]) -> None:
    """Return on SIGTERM or SIGINT, or when a background task ends (its failure is logged)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    waiter = asyncio.create_task(stop.wait(), name="signal")
    done, _ = await asyncio.wait([waiter, *tasks], return_when=asyncio.FIRST_COMPLETED)
    for task in done:
        if task is not waiter:
            error = task.exception() if not task.cancelled() else None
            log.error("%s ended unexpectedly%s", task.get_name(), f": {error!r}" if error else "")
    waiter.cancel()


async def stop_in_order(
    steps: Iterable[tuple[str, Callable[[], Awaitable[object]]]], *, each_s: float = 10.0
) -> None:
    """Run each stop step with its own deadline; a step that hangs (its peer is down) is abandoned, logged."""
    for name, step in steps:
        try:
            await asyncio.wait_for(step(), each_s)
        except TimeoutError:
            log.warning("stopping %s took longer than %.0fs; going on without it", name, each_s)
        except Exception as error:
            log.warning("stopping %s failed: %r", name, error)
