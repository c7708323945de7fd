"""Per-partition tasks of the consumer, without Kafka: order, isolation, back-pressure, closing."""

from __future__ import annotations

import asyncio

from aiokafka import TopicPartition

from mlops.bus.partitions import PartitionWorker
from mlops.bus.producer import _deliveries


class Record:
    def __init__(self, tp: TopicPartition, offset: int) -> None:
        self.topic, self.partition, self.offset = tp.topic, tp.partition, offset


A = TopicPartition("a", 0)
B = TopicPartition("b", 1)


def records(tp: TopicPartition, *offsets: int) -> list[Record]:
    return [Record(tp, offset) for offset in offsets]


class Flow:
    def __init__(self) -> None:
        self.events: list[tuple[str, TopicPartition]] = []

    def pause(self, tp):
        self.events.append(("pause", tp))

    def resume(self, tp):
        self.events.append(("resume", tp))


def worker(tp, handle, flow=None, limit=100) -> PartitionWorker:
    flow = flow or Flow()
    return PartitionWorker(tp, handle=handle, pause=flow.pause, resume=flow.resume, limit=limit)


async def until(check) -> None:
    """Yield to the loop until `check()` holds; a bounded number of turns, not a time."""
    for _ in range(10_000):
        if check():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition never held")


async def test_a_stuck_partition_does_not_hold_up_another():
    unblock = asyncio.Event()
    handled: list[tuple[str, int]] = []

    async def handle(record):
        if record.topic == "a":
            await unblock.wait()
        handled.append((record.topic, record.offset))

    stuck, free = worker(A, handle), worker(B, handle)
    stuck.put(records(A, 0, 1))
    free.put(records(B, 5, 6, 7))
    await until(lambda: free.acked == 7)
    assert handled == [("b", 5), ("b", 6), ("b", 7)] and stuck.acked is None
    unblock.set()
    await until(lambda: stuck.acked == 1)
    assert handled[3:] == [("a", 0), ("a", 1)], "one partition's records stay in order"
    await asyncio.gather(stuck.close(1), free.close(1))


async def test_acked_waits_for_what_the_records_published():
    delivery = asyncio.get_running_loop().create_future()

    async def handle(record):
        _deliveries.get().append(delivery)

    w = worker(A, handle)
    w.put(records(A, 3))
    for _ in range(100):
        await asyncio.sleep(0)
    assert w.acked is None, "not committable before Kafka acknowledged its publishes"
    delivery.set_result(None)
    await until(lambda: w.acked == 3)
    await w.close(1)


async def test_a_full_backlog_pauses_the_partition_until_it_is_taken():
    flow = Flow()
    gate = asyncio.Event()

    async def handle(record):
        await gate.wait()

    w = worker(A, handle, flow, limit=2)
    w.put(records(A, 0))
    await until(lambda: not w._backlog)  # the first record is in hand, blocked
    w.put(records(A, 1, 2))
    assert flow.events == [("pause", A)]
    gate.set()
    await until(lambda: w.acked == 2)
    assert flow.events == [("pause", A), ("resume", A)]
    await w.close(1)


async def test_close_cancels_a_record_stuck_past_the_grace_and_leaves_it_unacknowledged():
    in_hand = asyncio.Event()

    async def handle(record):
        if record.offset == 1:
            in_hand.set()
            await asyncio.Event().wait()  # never set: stuck for good

    w = worker(A, handle)
    w.put(records(A, 0, 1, 2))
    await in_hand.wait()
    await w.close(0.05)
    assert w.task.cancelled()
    assert w.acked is None and w.reread_from == 0, "nothing of the cancelled run is committed"
    assert w.failure is None, "closing is not a failure"


async def test_a_failure_is_reported_with_where_to_read_again():
    async def handle(record):
        if record.offset == 4:
            raise ConnectionError("broker gone")

    w = worker(A, handle)
    w.put(records(A, 2, 3))
    await until(lambda: w.acked == 3)
    w.put(records(A, 4, 5))
    await until(lambda: w.task.done())
    assert isinstance(w.failure, ConnectionError)
    assert w.reread_from == 4
