"""What drives the closed loop from the outside, through public surfaces only: client traffic over the
Open Inference Protocol (with the truth published later as `GroundTruthLogged`, as an upstream system
that learns outcomes would), and a tail of the platform's topics to follow what it does.

Used by `make demo` and by the end-to-end test of the loop.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import grpc
import numpy as np
from aiokafka import AIOKafkaConsumer
from google.protobuf.message import Message

from inference import grpc_service_pb2 as oip
from inference import grpc_service_pb2_grpc as oip_grpc
from mlops.bus import EventPublisher, ensure_topics, partitions_of
from mlops.envelope import Envelope, decode
from mlops.event_catalog import spec_for
from mlops.events.v1 import monitoring_pb2
from mlops.grpc import open_channel
from mlops.settings import BusSettings, KafkaSettings

Shift = Callable[[np.ndarray], np.ndarray]


@dataclass
class TrafficStats:
    """What the client saw: answers by version, failures by status code."""

    answered: Counter = field(default_factory=Counter)
    failed: Counter = field(default_factory=Counter)
    truths_sent: int = 0
    messages: list[str] = field(default_factory=list)

    @property
    def total_failed(self) -> int:
        return sum(self.failed.values())


class Traffic:
    """Batch-1 OIP requests at a steady rate, rows drawn from a data set (with a little noise so that
    no two rows repeat), optionally shifted; the true label of each answered row is published as
    `GroundTruthLogged` once the answer is in."""

    def __init__(
        self,
        *,
        model: str,
        features: np.ndarray,
        labels: Iterable[str],
        address: str = "127.0.0.1:8001",
        rate_per_s: float = 40.0,
        noise: float = 0.02,
        seed: int = 11,
        publish_truth: bool = True,
    ) -> None:
        self.model = model
        self.features = np.asarray(features, dtype=np.float32)
        self.labels = list(labels)
        self.address = address
        self.rate_per_s = rate_per_s
        self.noise = self.features.std(axis=0) * noise
        self.random = np.random.default_rng(seed)
        self.publish_truth = publish_truth
        self.shift: Shift | None = None
        self.stats = TrafficStats()
        self._task: asyncio.Task | None = None
        self._stopping = asyncio.Event()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="traffic")

    async def stop(self) -> TrafficStats:
        self._stopping.set()
        if self._task is not None:
            await self._task
        return self.stats

    async def _run(self) -> None:
        publisher = (
            EventPublisher(KafkaSettings(), BusSettings(), source="mlops-client")
            if self.publish_truth
            else None
        )
        if publisher is not None:
            await publisher.start()
        channel = open_channel(self.address, traced=False)
        stub = oip_grpc.GRPCInferenceServiceStub(channel)
        in_flight: set[asyncio.Task] = set()
        try:
            interval = 1.0 / self.rate_per_s
            next_at = time.monotonic()
            while not self._stopping.is_set():
                task = asyncio.create_task(self._one(stub, publisher))
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
                next_at += interval
                delay = next_at - time.monotonic()
                if delay > 0:
                    try:
                        await asyncio.wait_for(self._stopping.wait(), delay)
                    except TimeoutError:
                        pass
                else:
                    next_at = time.monotonic()  # behind: do not burst to catch up
            if in_flight:
                await asyncio.gather(*in_flight, return_exceptions=True)
        finally:
            await channel.close()
            if publisher is not None:
                await publisher.stop()

    async def _one(self, stub: oip_grpc.GRPCInferenceServiceStub, publisher: EventPublisher | None) -> None:
        index = int(self.random.integers(len(self.features)))
        row = (
            self.features[index]
            + self.random.normal(0.0, 1.0, self.noise.shape).astype(np.float32) * self.noise
        )
        if self.shift is not None:
            row = self.shift(row[None, :])[0]
        request_id = uuid.uuid4().hex
        request = oip.ModelInferRequest(
            model_name=self.model,
            id=request_id,
            inputs=[
                oip.ModelInferRequest.InferInputTensor(
                    name="input",
                    datatype="FP32",
                    shape=[1, len(row)],
                    contents=oip.InferTensorContents(fp32_contents=row.astype(np.float32).tolist()),
                )
            ],
        )
        try:
            response = await stub.ModelInfer(request, timeout=5.0)
        except grpc.aio.AioRpcError as error:
            self.stats.failed[error.code().name] += 1
            if len(self.stats.messages) < 20:
                self.stats.messages.append(f"{error.code().name}: {error.details()}")
            return
        self.stats.answered[response.model_version] += 1
        if publisher is not None:
            truth = monitoring_pb2.GroundTruthLogged(
                model=self.model, request_id=request_id, label=self.labels[index]
            )
            await publisher.publish(truth)
            self.stats.truths_sent += 1


async def wait_ready(
    model: str, version: int, *, address: str = "127.0.0.1:8001", timeout_s: float = 60.0
) -> None:
    """Until the inference server at `address` says the version is loaded and ready (it loads what
    the deployer's desired state names); TimeoutError past the deadline."""
    deadline = time.monotonic() + timeout_s
    async with open_channel(address, traced=False) as channel:
        stub = oip_grpc.GRPCInferenceServiceStub(channel)
        while time.monotonic() < deadline:
            try:
                reply = await stub.ModelReady(
                    oip.ModelReadyRequest(name=model, version=str(version)), timeout=2.0
                )
                if reply.ready:
                    return
            except grpc.aio.AioRpcError:
                pass
            await asyncio.sleep(0.2)
    raise TimeoutError(f"{model}@{version} is not ready on {address} after {timeout_s:.0f} s")


@dataclass
class Seen:
    """One event read back from its topic."""

    topic: str
    envelope: Envelope
    event: Message
    timestamp_ms: int


class EventTail:
    """Every event of the given types published since `since_ms` about the given keys (a model's
    name, its data set's name)."""

    def __init__(self, events: Iterable[type[Message]], *, keys: Iterable[str], since_ms: int) -> None:
        self.kafka = KafkaSettings()
        self.bus = BusSettings()
        self.topics = {self.bus.topic_prefix + spec_for(event).topic: event for event in events}
        self.keys = {key.encode() for key in keys}
        self.since_ms = since_ms
        self.seen: list[Seen] = []
        self._consumer: AIOKafkaConsumer | None = None

    async def start(self) -> None:
        await ensure_topics(self.kafka, self.bus, [spec_for(event).topic for event in self.topics.values()])
        consumer = AIOKafkaConsumer(**self.kafka.client_options(), group_id=None, enable_auto_commit=False)
        await consumer.start()
        partitions = [tp for topic in self.topics for tp in await partitions_of(self.kafka, topic)]
        consumer.assign(partitions)
        ends = await consumer.end_offsets(partitions)
        found = await consumer.offsets_for_times({tp: self.since_ms for tp in partitions})
        for tp in partitions:
            at = found.get(tp)
            consumer.seek(tp, at.offset if at is not None else ends[tp])
        self._consumer = consumer

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()

    async def poll(self, timeout_ms: int = 500) -> list[Seen]:
        """The next events for the key, in arrival order; also kept in `seen`."""
        assert self._consumer is not None, "start() first"
        batch = await self._consumer.getmany(timeout_ms=timeout_ms)
        fresh: list[Seen] = []
        for records in batch.values():
            for record in records:
                if record.key not in self.keys or record.value is None:
                    continue
                envelope, event = decode(
                    topic=record.topic.removeprefix(self.bus.topic_prefix),
                    partition=record.partition,
                    offset=record.offset,
                    timestamp_ms=record.timestamp,
                    headers=record.headers,
                    value=record.value,
                )
                fresh.append(Seen(record.topic, envelope, event, record.timestamp))
        fresh.sort(key=lambda seen: seen.timestamp_ms)
        self.seen.extend(fresh)
        return fresh

    async def wait_for(
        self,
        event: type[Message],
        predicate: Callable[[Message], bool] = lambda _: True,
        *,
        timeout_s: float,
        on_event: Callable[[Seen], None] = lambda _: None,
        what: str = "",
    ) -> Seen:
        """The first event of `event`'s type that satisfies `predicate` (seen before or arriving
        within the deadline); every event read meanwhile goes to `on_event`."""
        for seen in self.seen:
            if isinstance(seen.event, event) and predicate(seen.event):
                return seen
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for seen in await self.poll():
                on_event(seen)
                if isinstance(seen.event, event) and predicate(seen.event):
                    return seen
        keys = ", ".join(sorted(key.decode() for key in self.keys))
        raise TimeoutError(f"no {what or event.__name__} about {keys} within {timeout_s:.0f} s")


def shift_features(columns: list[str], shifted: dict[str, float], scale: np.ndarray) -> Shift:
    """Moves the named columns by the given multiples of their spread: drift an upstream change
    (a new sensor, a unit change, a new population) would cause."""
    offsets = np.zeros(len(columns), dtype=np.float32)
    for name, sigmas in shifted.items():
        offsets[columns.index(name)] = sigmas * scale[columns.index(name)]
    return lambda rows: rows + offsets
