"""Training slots survive a killed worker process, and stop a run past its time, with real processes."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest

from services.trainer.pool import RunTimedOut, TrainingSlot, WorkerKilled, describe_exit, spawned_executor


def _pid() -> int:
    return os.getpid()


def _die_by(signum: int) -> None:
    os.kill(os.getpid(), signum)


def _hang() -> None:
    time.sleep(3600)


@pytest.fixture
async def slot():
    slot = TrainingSlot(spawned_executor)
    yield slot
    await slot.stop()


def test_exit_codes_in_words():
    assert describe_exit(-9) == "worker killed by signal 9 (SIGKILL)"
    assert describe_exit(-15) == "worker killed by signal 15 (SIGTERM)"
    assert describe_exit(1) == "worker exited with status 1"
    assert describe_exit(None) == "worker process died (exit status unknown)"
    assert describe_exit(-250) == "worker killed by signal 250 (unknown signal)"


async def test_a_worker_killed_mid_run_is_named_and_the_next_run_works(slot):
    first = await slot.run(_pid)
    with pytest.raises(WorkerKilled) as caught:
        await slot.run(_die_by, signal.SIGKILL)
    assert caught.value.exitcode == -signal.SIGKILL
    assert caught.value.reason == "worker killed by signal 9 (SIGKILL)"
    second = await slot.run(_pid)  # a new process, not a broken pool
    assert second != first and slot.replacements == 1


async def test_a_worker_killed_while_idle_is_replaced_without_failing_the_next_run(slot):
    first = await slot.run(_pid)
    os.kill(first, signal.SIGKILL)
    await _until_dead(first)
    # Whether the executor noticed the death yet or not, the next call runs in a live process.
    second = await slot.run(_pid)
    assert second != first


async def test_a_run_past_its_time_is_killed_and_the_slot_works_again(slot):
    pid = await slot.run(_pid)
    with pytest.raises(RunTimedOut) as caught:
        await slot.run(_hang, timeout_s=0.5)
    assert caught.value.timeout_s == 0.5
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # the hung process is gone, not left running beside the new one
    assert await slot.run(_pid) != pid


async def test_a_stopped_slot_kills_its_worker(slot):
    pid = await slot.run(_pid)
    await slot.stop()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert slot.pids() == [] or all(not _alive(p) for p in slot.pids())


async def _until_dead(pid: int, timeout_s: float = 10.0) -> None:
    """Until the process is a zombie or gone (the executor reaps its own children)."""
    deadline = time.monotonic() + timeout_s
    while _alive(pid) and _state(pid) not in ("Z", ""):
        assert time.monotonic() < deadline, f"process {pid} still alive"
        await asyncio.sleep(0.01)


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return ""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
