"""The deployer's per-model locks: exclusive per model, and forgotten once nobody uses them."""

from __future__ import annotations

import asyncio

import pytest

from services.deployer.locks import KeyedLocks


async def test_moves_of_one_model_take_turns_and_the_map_empties_after():
    locks = KeyedLocks()
    order: list[str] = []
    first_in = asyncio.Event()
    release = asyncio.Event()

    async def first():
        async with locks.hold("m"):
            order.append("first in")
            first_in.set()
            await release.wait()
            order.append("first out")

    async def second():
        await first_in.wait()
        async with locks.hold("m"):
            order.append("second in")

    tasks = [asyncio.create_task(first()), asyncio.create_task(second())]
    await first_in.wait()
    for _ in range(5):  # let the second move reach the lock and wait on it (no clock involved)
        await asyncio.sleep(0)
    assert order == ["first in"] and len(locks) == 1
    release.set()
    await asyncio.gather(*tasks)
    assert order == ["first in", "first out", "second in"]
    assert len(locks) == 0


async def test_many_names_leave_no_locks_behind():
    locks = KeyedLocks()
    for n in range(10_000):
        async with locks.hold(f"model-{n}"):
            assert len(locks) == 1
    assert len(locks) == 0


async def test_a_failing_move_releases_its_lock():
    locks = KeyedLocks()
    with pytest.raises(RuntimeError, match="boom"):
        async with locks.hold("m"):
            raise RuntimeError("boom")
    assert len(locks) == 0
    async with locks.hold("m"):  # the key can be taken again at once
        assert len(locks) == 1
