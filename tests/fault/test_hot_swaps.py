"""R9: a hundred hot swaps under load fail no request (the 50-swap integration test's approach, doubled)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import grpc

from tests.fault.conftest import figures
from tests.integration.conftest import artifact_settings, eventually, kafka, telemetry  # noqa: F401 - shared fixtures
from tests.integration.inference_helpers import (  # noqa: F401 - shared fixtures
    harness,
    models,
    name,
    request,
    sample,
    state,
    topics_bus,
    triton_script,
    version,
)

SWAPS = 100


async def test_a_hundred_hot_swaps_under_load_fail_no_request(harness, models):  # noqa: F811
    model = name()
    a, b = models.wine_a, models.wine_b
    await harness.serve(state(model, 1, version(a, 1), batch=16, wait_us=500))
    rows = a.rows[:2]
    stop = asyncio.Event()
    outcomes: Counter = Counter()
    failures: list[str] = []

    async def client() -> None:
        while not stop.is_set():
            try:
                answer = await harness.stub.ModelInfer(request(model, rows), timeout=10)
                outcomes[answer.model_version] += 1
            except grpc.aio.AioRpcError as error:
                failures.append(f"{error.code().name}: {error.details()}")

    started = time.perf_counter()
    clients = [asyncio.create_task(client()) for _ in range(8)]
    try:
        for generation in range(2, SWAPS + 2):
            serving = version(b, 2) if generation % 2 else version(a, 1)
            # alternate batching too, so that batchers are replaced as well as sessions
            await harness.serve(
                state(model, generation, serving, batch=16 if generation % 3 else 0, wait_us=500)
            )
            before = sum(outcomes.values())
            await eventually(
                lambda before=before: sum(outcomes.values()) > before + 5, what="requests flowing"
            )
    finally:
        stop.set()
        await asyncio.gather(*clients)
    took = time.perf_counter() - started
    figures(
        "R9 hot swaps under load",
        swaps=SWAPS,
        requests=sum(outcomes.values()) + len(failures),
        failed=len(failures),
        v1=outcomes["1"],
        v2=outcomes["2"],
        seconds=round(took, 1),
    )
    assert failures == [], failures[:5]
    assert outcomes["1"] > 0 and outcomes["2"] > 0, outcomes
    assert sample("mlops_inference_swaps_total", model=model) >= SWAPS + 1
