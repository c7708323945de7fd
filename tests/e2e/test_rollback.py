"""A slow candidate is rolled back on its own, through the running platform, while production keeps
answering: the real inference server serves the canary, the real monitor measures its latency from
the inference log, and the real deployer withdraws it on the spec's p99 bound. The test only drives
public surfaces: the CLI, the registry's gRPC API (to register the candidate as the trainer does), the
artifact store, the Open Inference Protocol and the platform's topics."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from mlops.demo.loop import EventTail
from mlops.events.v1 import deployment_pb2
from tests.e2e.conftest import mlops
from tests.e2e.rollouts import (
    apply_spec,
    client,
    deploy_first_version,
    only_version_answers,
    register_slow_candidate,
    wine,
)
from tests.integration.conftest import eventually

MAX_P99_MS = 40
ITERATIONS = 40_000
"""About 160 ms a call on an idle CPU core (4 µs an iteration), four times the bound; the test checks
that a call takes at least 2.5 times the bound before it registers the model."""

SPEC = """apiVersion: mlops/v1
kind: ModelSpec
metadata: {{name: {model}}}
spec:
  dataset: {dataset}
  task: classification
  label: target
  training: {{hidden_layers: [32], epochs: 60, learning_rate: 0.01, batch_size: 32, seed: 7}}
  gate: {{metric: accuracy, min: 0.8, max_regression: 0.02, max_p99_latency_ms: 50}}
  rollout: {{strategy: canary, steps: [50, 100], step_seconds: 4, max_error_rate: 0.05, max_p99_latency_ms: {bound}, min_requests: 10}}
  monitor: {{window_seconds: 3, method: psi, threshold: 0.2, consecutive_windows: 2, on_drift: none, min_samples: 40}}
"""


@pytest.mark.timeout(300)
async def test_a_slow_canary_is_rolled_back_automatically_and_production_never_stops_answering(
    unique, tmp_path: Path
):
    model, dataset = f"rb-{unique}", f"rbdata-{unique}"
    apply_spec(tmp_path, SPEC.format(model=model, dataset=dataset, bound=MAX_P99_MS))
    data = wine()

    tail = EventTail(
        [deployment_pb2.ModelDeployed, deployment_pb2.RolloutProgressed, deployment_pb2.ModelRolledBack],
        keys=[model],
        since_ms=int(time.time() * 1000) - 1000,
    )
    await tail.start()
    traffic = client(model, data)
    try:
        first = await deploy_first_version(model, dataset, data, tmp_path, tail)
        traffic.start()
        await eventually(
            lambda: traffic.stats.answered[str(first.version)] >= 40,
            timeout_s=30,
            what="v1 answering the client",
        )

        candidate = await register_slow_candidate(
            model, first.version, data.features, iterations=ITERATIONS, max_p99_ms=MAX_P99_MS
        )
        assert candidate.version == first.version + 1
        started = mlops(
            "rollout", "start", model, str(candidate.version), "--reason", "a candidate far slower than v1"
        )
        assert started["strategy"] == "canary" and started["steps"] == [50, 100], started
        assert int(started["baselineVersion"]) == first.version

        rolled = (
            await tail.wait_for(
                deployment_pb2.ModelRolledBack,
                lambda e: e.from_version == candidate.version,
                timeout_s=90,
                what=f"ModelRolledBack of v{candidate.version}",
            )
        ).event
        # The inference server drops the candidate: v1 alone answers from then on.
        await only_version_answers(traffic, str(first.version), answers=40, timeout_s=30)
    finally:
        stats = await traffic.stop()
        await tail.stop()

    assert rolled.automatic and rolled.actor == "mlops-deployer", rolled
    assert rolled.to_version == first.version
    assert "p99 latency" in rolled.reason and "max_p99_latency_ms" in rolled.reason, rolled.reason
    assert "step 1 of 2 (50%)" in rolled.reason, rolled.reason
    assert rolled.candidate_health.request_count >= 10
    assert rolled.candidate_health.latency_p99_ms > MAX_P99_MS

    # The canary really served: its answers reached the client, and it never went past its first step.
    assert stats.answered[str(candidate.version)] > 0, stats.answered
    progressed = [
        s.event.traffic_percent
        for s in tail.seen
        if isinstance(s.event, deployment_pb2.RolloutProgressed)
        and s.event.candidate_version == candidate.version
    ]
    assert 50 in progressed and 100 not in progressed, progressed
    assert not [
        s
        for s in tail.seen
        if isinstance(s.event, deployment_pb2.ModelDeployed) and s.event.version == candidate.version
    ]
    # Production never stopped answering, before, during and after the canary.
    assert stats.total_failed == 0, (dict(stats.failed), stats.messages)
    assert stats.answered[str(first.version)] > 0

    desired = mlops("rollout", "desired", model)
    serving = [
        (int(v["version"]), v["role"], v["trafficPercent"])
        for v in desired["versions"]
        if v["trafficPercent"]
    ]
    assert serving == [(first.version, "SERVING_ROLE_PRODUCTION", 100)], desired
    assert str(candidate.version) not in {v["version"] for v in desired["versions"]}, desired
    assert int(mlops("models", "show", f"{model}@production")["version"]) == first.version
    assert mlops("models", "show", f"{model}@{candidate.version}")["aliases"] == []
    status = mlops("rollout", "status", model)
    assert status["state"] == "ROLLOUT_STATE_ROLLED_BACK", status
