"""What the inference server serves: desired states and their generations, new replicas, traffic
shares and shadows, batching, hot swaps under load, and where a call runs by its cost."""

# The fixtures imported from inference_helpers reach the tests by parameter name.
# ruff: noqa: F811

from __future__ import annotations

import asyncio
from collections import Counter

import grpc
import numpy as np
import pytest

from inference import grpc_service_pb2 as oip
from mlops.event_catalog import spec_for
from mlops.events.v1 import monitoring_pb2
from mlops.store import open_store
from services.inference.app import InferenceApp
from tests.e2e.slow_model import slowed
from tests.integration.bus_helpers import raw_reader
from tests.integration.conftest import eventually
from tests.integration.inference_helpers import (  # noqa: F401 - shared fixtures and helpers
    CANARY,
    PRODUCTION,
    SHADOW,
    Trained,
    _records,
    harness,
    models,
    name,
    probabilities,
    request,
    sample,
    server_settings,
    state,
    topics_bus,
    triton_script,
    version,
)

# --- desired state: served, replaced, ignored when older, removed, refused when bad ---------------


async def test_desired_state_generations_tombstones_and_bad_artifacts(harness, models):
    model = name()
    a, b = models.wine_a, models.wine_b
    rows = a.rows[:2]
    await harness.serve(state(model, 1, version(a, 1)))
    answer = await harness.stub.ModelInfer(request(model, rows))
    assert answer.model_version == "1"
    np.testing.assert_allclose(probabilities(answer), a.expected(rows)["probabilities"], rtol=1e-5, atol=1e-6)

    await harness.serve(state(model, 5, version(b, 2)))
    answer = await harness.stub.ModelInfer(request(model, rows))
    assert answer.model_version == "2"
    np.testing.assert_allclose(probabilities(answer), b.expected(rows)["probabilities"], rtol=1e-5, atol=1e-6)

    # An older generation arrives late: ignored. A marker state after it proves it was read.
    await harness.publish(state(model, 3, version(a, 1)))
    marker = name()
    await harness.serve(state(marker, 1, version(a, 1)))
    assert harness.app.core.generation(model) == 5
    assert (await harness.stub.ModelInfer(request(model, rows))).model_version == "2"

    # A wrong sha256 and bytes that are no ONNX model are refused; version 2 keeps serving.
    failures = sample("mlops_inference_load_failures_total", model=model, reason="IntegrityError")
    wrong_sha = version(a, 3)
    wrong_sha.artifact_sha256 = "0" * 64
    await harness.publish(state(model, 6, wrong_sha))
    await eventually(
        lambda: (
            sample("mlops_inference_load_failures_total", model=model, reason="IntegrityError") > failures
        ),
        what="sha mismatch refused",
    )
    not_onnx = version(a, 4)
    not_onnx.artifact_uri, not_onnx.artifact_sha256 = models.not_onnx_uri, models.not_onnx_sha256
    await harness.publish(state(model, 7, not_onnx))
    await eventually(
        lambda: sample("mlops_inference_load_failures_total", model=model, reason="ModelRejected") >= 1,
        what="non-ONNX artifact refused",
    )
    assert harness.app.core.generation(model) == 5
    assert (await harness.stub.ModelInfer(request(model, rows))).model_version == "2"

    # A tombstone: the model no longer serves.
    await harness.tombstone(model)
    await eventually(lambda: model not in harness.app.core.models, what="tombstone applied")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await harness.stub.ModelInfer(request(model, rows))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_a_new_replica_reads_the_whole_state(kafka, topics_bus, artifact_settings, harness, models):
    """Replicas share no offsets: a second server started later serves what the first serves."""
    model = name()
    await harness.serve(state(model, 4, version(models.wine_a, 1, 70), version(models.wine_b, 2, 30, CANARY)))
    replica = InferenceApp(
        server_settings(log_enabled=False), kafka=kafka, bus=topics_bus, store=open_store(artifact_settings)
    )
    await replica.start(ready_timeout_s=60)
    try:
        assert replica.core.generation(model) == 4, "ready only once the whole topic is applied"
        assert sorted(replica.core.models[model].by_version) == ["1", "2"]
    finally:
        await replica.stop()


# --- routing ----------------------------------------------------------------------------------------


async def test_traffic_shares_and_named_versions(harness, models):
    model = name()
    await harness.serve(state(model, 1, version(models.wine_a, 1, 80), version(models.wine_b, 2, 20, CANARY)))
    rows = models.wine_a.rows[:1]
    answers = await asyncio.gather(*(harness.stub.ModelInfer(request(model, rows)) for _ in range(1_000)))
    counts = Counter(answer.model_version for answer in answers)
    # binomial(1000, 0.2): sd 12.6; 60 is almost 5 sd
    assert abs(counts["2"] - 200) <= 60 and counts["1"] + counts["2"] == 1_000, counts
    for _ in range(20):
        assert (await harness.stub.ModelInfer(request(model, rows, version="2"))).model_version == "2"
    assert sample("mlops_inference_traffic_percent", model=model, version="2", role="canary") == 20


async def test_shadow_is_logged_and_does_not_change_the_answer(kafka, harness, models):
    model = name()
    a, b = models.wine_a, models.wine_b
    await harness.serve(state(model, 1, version(a, 1), version(b, 2, 0, SHADOW)))
    topic = harness.bus.topic_prefix + spec_for(monitoring_pb2.InferenceLogged).topic
    rows = a.rows[:1]
    async with raw_reader(kafka, topic) as reader:
        answer = await harness.stub.ModelInfer(request(model, rows, request_id="shadowed-1"))
        assert answer.model_version == "1"
        np.testing.assert_allclose(
            probabilities(answer), a.expected(rows)["probabilities"], rtol=1e-5, atol=1e-6
        )
        seen = await _records(reader, model, want=lambda seen: {r.role for r in seen} >= {PRODUCTION, SHADOW})
    by_role = {record.role: record for record in seen}
    assert by_role[SHADOW].request_id == by_role[PRODUCTION].request_id == "shadowed-1"
    assert by_role[SHADOW].version == 2 and by_role[PRODUCTION].version == 1
    np.testing.assert_allclose(
        by_role[SHADOW].outputs, b.expected(rows)["probabilities"][0], rtol=1e-5, atol=1e-6
    )


# --- batching -----------------------------------------------------------------------------------------


async def test_concurrent_requests_coalesce_into_batches(harness, models):
    model = name()
    await harness.serve(state(model, 1, version(models.wine_a, 1), batch=64, wait_us=20_000))
    rows = models.wine_a.rows
    answers = await asyncio.gather(
        *(harness.stub.ModelInfer(request(model, rows[i : i + 1])) for i in range(48))
    )
    expected = models.wine_a.expected(rows[:48])["probabilities"]
    for i, answer in enumerate(answers):  # each caller gets its own row's answer back
        np.testing.assert_allclose(probabilities(answer)[0], expected[i], rtol=1e-5, atol=1e-6)
    calls = sample("mlops_inference_batch_size_count", model=model, version="1")
    batched_rows = sample("mlops_inference_batch_size_sum", model=model, version="1")
    assert batched_rows == 48, "every row went through exactly one runtime call"
    assert calls < 48 / 2, f"48 concurrent single-row requests took {calls} runtime calls"


# --- hot swaps under load ------------------------------------------------------------------------------


async def test_fifty_hot_swaps_under_load_fail_no_request(harness, models):
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

    clients = [asyncio.create_task(client()) for _ in range(8)]
    try:
        for generation in range(2, 52):
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
    assert failures == [], failures[:5]
    assert outcomes["1"] > 0 and outcomes["2"] > 0, outcomes
    assert sample("mlops_inference_swaps_total", model=model) >= 51


async def test_a_cheap_version_answers_on_the_event_loop_while_a_slow_one_runs_on_the_threads(
    harness, models, artifact_settings
):
    """Where a call runs follows its cost (`inline_run_us`): the wine model runs on the event loop,
    its slow twin (same answers, ~0.3 s a call, slow from its warm-up) on the inference threads,
    so that requests to the cheap version are answered while the slow one computes."""
    cheap = models.wine_a
    slow_bytes = slowed(cheap.onnx, iterations=60_000)  # long enough for 5 calls on a loaded machine
    stored = await open_store(artifact_settings).put_bytes("models/inference-tests", "model.onnx", slow_bytes)
    slow = Trained(
        cheap.task, slow_bytes, stored.uri, stored.sha256, cheap.feature_names, cheap.class_labels, cheap.rows
    )
    model = name()
    await harness.serve(state(model, 1, version(cheap, 1), version(slow, 2, percent=0), batch=64))
    by_version = harness.app.core.models[model].by_version
    # The bound between the loop and the threads (`inline_run_us`, 200 µs by default) is set to 20 ms
    # here, far from both costs (the wine model: tens of µs; its twin: about 0.3 s), so that a loaded
    # machine timing a warm-up call slow cannot move the cheap version to the threads.
    for serving in by_version.values():
        serving.batcher.inline_below_s = 0.020
    assert by_version["1"].batcher.runs_inline(1), "the wine model costs less than a thread hop"
    assert not by_version["2"].batcher.runs_inline(1), "the slow twin was timed slow at its warm-up"

    rows = cheap.rows
    finished: list[str] = []

    async def call(version_text: str, row: int) -> oip.ModelInferResponse:
        answer = await harness.stub.ModelInfer(request(model, rows[row : row + 1], version=version_text))
        finished.append(version_text)
        return answer

    slow_call = asyncio.create_task(call("2", 0))
    cheap_answers = [await call("1", i) for i in range(1, 6)]  # one after another, while v2 computes
    slow_answer = await slow_call
    assert finished[:5] == ["1"] * 5, f"the cheap version waited for the slow one: {finished}"
    expected = cheap.expected(rows[:6])["probabilities"]
    np.testing.assert_allclose(probabilities(slow_answer)[0], expected[0], rtol=1e-5, atol=1e-6)
    for i, answer in enumerate(cheap_answers, 1):
        np.testing.assert_allclose(probabilities(answer)[0], expected[i], rtol=1e-5, atol=1e-6)
