"""Routing by traffic share, named versions, and dynamic batching, without a server."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from mlops.errors import NotFound, Unavailable
from services.inference.batching import Batcher
from services.inference.core import InferenceCore, ModelRoutes, ModelState, Serving, VersionSpec
from tests.unit.test_inference_codec import SumModel


def spec(version: int, percent: int, role: str) -> VersionSpec:
    return VersionSpec(
        version, "s3://b/k", f"{version:064d}", percent, role, "classification", ("a", "b", "c"), ("x", "y")
    )


def routes(*specs: VersionSpec) -> ModelRoutes:
    executor = ThreadPoolExecutor(1)
    servings = [
        Serving(
            "wine",
            s,
            SumModel(),
            {},
            Batcher(SumModel().run, executor, max_batch_size=0, max_wait_us=0, observe_batch=lambda n: None),
        )
        for s in specs
    ]
    return ModelRoutes(ModelState("wine", 1, tuple(specs)), servings)


def test_requests_without_a_version_follow_the_traffic_shares():
    table = routes(spec(1, 90, "production"), spec(2, 10, "canary"), spec(3, 0, "shadow"))
    counts = Counter(table.pick().spec.version for _ in range(20_000))
    assert set(counts) == {1, 2}, "a shadow never answers"
    assert abs(counts[2] / 20_000 - 0.10) < 0.015
    assert [s.spec.version for s in table.shadows] == [3]
    assert table.default.spec.version == 1


def test_only_shadows_answer_no_traffic():
    assert routes(spec(3, 0, "shadow")).pick() is None


def test_route_names_versions_and_tells_unknown_from_not_ready():
    core = InferenceCore(runtime=None, read_artifact=None, executor=ThreadPoolExecutor(1))  # type: ignore[arg-type]
    core._table = {"wine": routes(spec(1, 100, "production"), spec(2, 0, "shadow"))}
    core._not_ready = {"beer": "model 'beer' is loading (generation 3)"}
    assert core.route("wine", "2").serving.spec.version == 2
    target = core.route("wine")
    assert target.serving.spec.version == 1 and [s.spec.version for s in target.shadows] == [2]
    with pytest.raises(NotFound, match="no version '9'"):
        core.route("wine", "9")
    with pytest.raises(NotFound, match="not served"):
        core.route("cider")
    with pytest.raises(Unavailable, match="loading"):
        core.route("beer")


async def test_batcher_coalesces_queued_requests_and_splits_answers():
    sizes: list[int] = []
    batcher = Batcher(
        SumModel().run,
        ThreadPoolExecutor(1),
        max_batch_size=8,
        max_wait_us=50_000,
        observe_batch=sizes.append,
    )
    rows = [np.full((1, 3), i, np.float32) for i in range(6)] + [np.ones((3, 3), np.float32)]
    answers = await asyncio.gather(*(batcher.submit(r) for r in rows))
    assert sum(sizes) == 9 and len(sizes) < len(rows), sizes
    for part, answer in zip(rows, answers, strict=True):
        np.testing.assert_allclose(answer["probabilities"], SumModel().run(part)["probabilities"])
    batcher.close()
    late = await batcher.submit(np.zeros((1, 3), np.float32))  # a closed batcher still answers
    assert late["label"].tolist() == [0]


class FakeClock:
    """A clock that moves only when a model says its call took time: timing decisions without timing."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class ThreadNoting(SumModel):
    """SumModel that notes which thread ran each call, and can be made slow (on `clock` when given,
    else by sleeping)."""

    def __init__(self, delay_s: float = 0.0, clock: FakeClock | None = None) -> None:
        self.delay_s = delay_s
        self.clock = clock
        self.threads: list[int] = []

    def run(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        self.threads.append(threading.get_ident())
        if self.clock is not None:
            self.clock.now += self.delay_s
        elif self.delay_s:
            time.sleep(self.delay_s)
        return super().run(rows)


def cheap_first_batcher(
    run,
    *,
    estimated_call_s: float | None,
    batch: int = 8,
    wait_us: int = 0,
    observe=lambda n: None,
    clock=time.perf_counter,
) -> Batcher:
    """A batcher that runs calls on the event loop when they take under a millisecond."""
    return Batcher(
        run,
        ThreadPoolExecutor(1),
        max_batch_size=batch,
        max_wait_us=wait_us,
        observe_batch=observe,
        inline_below_us=1_000,
        estimated_call_s=estimated_call_s,
        clock=clock,
    )


@pytest.mark.parametrize("batch", [8, 0], ids=["batched", "unbatched"])
async def test_a_cheap_model_runs_on_the_event_loop_and_a_slow_one_on_the_threads(batch):
    loop_thread = threading.get_ident()
    cheap, slow = ThreadNoting(), ThreadNoting(delay_s=0.005)
    rows = np.ones((1, 3), np.float32)
    answers = await asyncio.gather(
        cheap_first_batcher(cheap.run, estimated_call_s=1e-5, batch=batch).submit(rows),
        cheap_first_batcher(slow.run, estimated_call_s=5e-3, batch=batch).submit(rows),
    )
    assert cheap.threads == [loop_thread]
    assert slow.threads and loop_thread not in slow.threads
    for answer in answers:
        np.testing.assert_allclose(answer["probabilities"], SumModel().run(rows)["probabilities"])


async def test_calls_are_timed_so_the_place_a_model_runs_follows_its_cost():
    loop_thread = threading.get_ident()
    clock = FakeClock()
    model = ThreadNoting(clock=clock)
    batcher = cheap_first_batcher(model.run, estimated_call_s=None, clock=clock)
    rows = np.ones((1, 3), np.float32)
    await batcher.submit(rows)
    assert model.threads[-1] != loop_thread, "an untimed model starts on the threads"
    await batcher.submit(rows)
    assert model.threads[-1] == loop_thread, "once timed as cheap, it runs on the loop"
    model.delay_s = 0.02
    await batcher.submit(rows)
    assert batcher.call_s is not None and batcher.call_s > batcher.inline_below_s
    await batcher.submit(rows)
    assert model.threads[-1] != loop_thread, "a model that turned slow leaves the loop"


@pytest.mark.parametrize("batch", [8, 0], ids=["batched", "unbatched"])
async def test_a_call_that_fails_on_the_event_loop_fails_its_requests_only(batch):
    def broken(rows: np.ndarray) -> dict[str, np.ndarray]:
        raise ValueError("input has 2 columns, 3 expected")

    batcher = cheap_first_batcher(broken, estimated_call_s=1e-6, batch=batch)
    with pytest.raises(ValueError, match="3 expected"):
        await batcher.submit(np.ones((1, 2), np.float32))
    assert batcher.runs_inline(1), "one failure leaves the cheap model on the loop"


async def test_a_cheap_model_with_a_configured_wait_still_coalesces_requests():
    sizes: list[int] = []
    batcher = cheap_first_batcher(SumModel().run, estimated_call_s=1e-6, wait_us=50_000, observe=sizes.append)
    answers = await asyncio.gather(*(batcher.submit(np.full((1, 3), i, np.float32)) for i in range(5)))
    assert sizes == [5], sizes
    assert [round(float(a["probabilities"][0, 1]), 4) for a in answers] == [
        round(float(1 / (1 + np.exp(-3 * i))), 4) for i in range(5)
    ]
