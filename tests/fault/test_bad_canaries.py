"""R8: bad canaries are withdrawn on their own, and production never notices.

One model is trained and deployed through the running platform; then three bad candidates of it are
rolled out as canaries, one after the other, while a client calls the model by name at a steady rate
through each whole rollout:

- erroring: the v1 graph behind a Gather that fails on any real row (it passes the inference
  server's warm-up on zeros), rolled back on the error-rate bound;
- slow: the v1 graph behind a busy loop, rolled back on the p99 bound;
- silent: v1's graph as it is, under a spec whose min_requests the traffic never reaches, so that
  the monitor never gives a verdict: rolled back once the spec's health_timeout_seconds have passed.

For each, production stays on v1, the inference server counts no failed call of v1, and the client
sees no failure but the erroring canary's own. Nothing is killed here: only the platform's public
surfaces are driven (the CLI, the registry's gRPC API, the artifact store, the Open Inference
Protocol, the platform's topics and the inference server's metrics).
"""

from __future__ import annotations

import re
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from mlops.demo.loop import EventTail, TrafficStats
from mlops.events.v1 import deployment_pb2
from mlops.registry.v1 import registry_pb2 as pb
from tests.e2e.conftest import mlops
from tests.e2e.rollouts import (
    VersionCaller,
    Wine,
    apply_spec,
    client,
    deploy_first_version,
    only_version_answers,
    register_erroring_candidate,
    register_slow_candidate,
    register_twin_candidate,
    served_requests,
    wine,
)
from tests.fault.conftest import figures
from tests.integration.conftest import eventually

MAX_P99_MS = 40
ITERATIONS = 40_000
"""About 160 ms a call on an idle core, four times the p99 bound (checked before registering)."""
MAX_ERROR_RATE = 0.05
STEP_SECONDS = 4
MIN_REQUESTS = 10
HEALTH_TIMEOUT_S = 5
UNREACHABLE_MIN_REQUESTS = 1_000_000
"""The silent canary's min_requests: at 40 requests a second, half of them to the canary, a step
window of 4 s holds about 80 of its requests, never this many."""

SPEC = """apiVersion: mlops/v1
kind: ModelSpec
metadata: {{name: {model}}}
spec:
  dataset: {dataset}
  task: classification
  label: target
  training: {{hidden_layers: [32], epochs: 60, learning_rate: 0.01, batch_size: 32, seed: 7}}
  gate: {{metric: accuracy, min: 0.8, max_regression: 0.02, max_p99_latency_ms: 50}}
  rollout: {{strategy: canary, steps: [50, 100], step_seconds: {step}, max_error_rate: {errors},
            max_p99_latency_ms: {bound}, min_requests: {min_requests},
            health_timeout_seconds: {timeout}, on_health_timeout: rollback}}
  monitor: {{window_seconds: 3, method: psi, threshold: 0.2, consecutive_windows: 2, on_drift: none, min_samples: 40}}
"""


@dataclass
class Served:
    """The model with v1 trained, deployed and answering."""

    model: str
    dataset: str
    data: Wine
    baseline: int
    tmp_path: Path

    def apply(self, *, min_requests: int) -> None:
        apply_spec(
            self.tmp_path,
            SPEC.format(
                model=self.model,
                dataset=self.dataset,
                step=STEP_SECONDS,
                errors=MAX_ERROR_RATE,
                bound=MAX_P99_MS,
                min_requests=min_requests,
                timeout=HEALTH_TIMEOUT_S,
            ),
        )


@pytest.fixture(scope="module")
async def served(tmp_path_factory) -> Served:
    unique = uuid.uuid4().hex[:12]
    tmp_path = tmp_path_factory.mktemp("bad-canaries")
    served = Served(f"bc-{unique}", f"bcdata-{unique}", wine(), 0, tmp_path)
    served.apply(min_requests=MIN_REQUESTS)
    tail = EventTail([deployment_pb2.ModelDeployed], keys=[served.model], since_ms=_now_ms() - 1000)
    await tail.start()
    try:
        first = await deploy_first_version(served.model, served.dataset, served.data, tmp_path, tail)
    finally:
        await tail.stop()
    served.baseline = first.version
    return served


@dataclass
class Outcome:
    rolled: deployment_pb2.ModelRolledBack
    candidate: pb.ModelVersion
    stats: TrafficStats
    baseline_failed: float
    """Calls of the baseline the inference server answered with an error during the rollout."""
    production: VersionCaller
    """The caller of the baseline by its version number."""
    seconds: float
    """From `mlops rollout start` to the ModelRolledBack event's time."""
    history: list[str]


async def _roll_out_bad(served: Served, register, why: str) -> Outcome:
    """With a client calling the model throughout: register the candidate, start its canary, wait
    for the automatic rollback and for v1 alone to answer again."""
    model, baseline = served.model, served.baseline
    before = served_requests(model)
    tail = EventTail(
        [deployment_pb2.RolloutProgressed, deployment_pb2.ModelRolledBack, deployment_pb2.ModelDeployed],
        keys=[model],
        since_ms=_now_ms() - 1000,
    )
    await tail.start()
    traffic = client(model, served.data)
    production = VersionCaller(model, baseline, served.data.features)
    traffic.start()
    production.start()
    try:
        await eventually(
            lambda: traffic.stats.answered[str(baseline)] >= 40, timeout_s=30, what=f"v{baseline} answering"
        )
        candidate = await register()
        started_at = time.time()
        started = mlops("rollout", "start", model, str(candidate.version), "--reason", why)
        assert started["strategy"] == "canary" and started["steps"] == [50, 100], started
        assert int(started["baselineVersion"]) == baseline, started
        rolled = (
            await tail.wait_for(
                deployment_pb2.ModelRolledBack,
                lambda e: e.from_version == candidate.version,
                timeout_s=90,
                what=f"ModelRolledBack of v{candidate.version}",
            )
        ).event
        await only_version_answers(traffic, str(baseline), answers=40, timeout_s=30)
    finally:
        stats = await traffic.stop()
        await production.stop()
        await tail.stop()
    after = served_requests(model)

    # Production stayed on the baseline: never a step past the first, never a deployment.
    progressed = [
        s.event.traffic_percent
        for s in tail.seen
        if isinstance(s.event, deployment_pb2.RolloutProgressed)
        and s.event.candidate_version == candidate.version
    ]
    assert 50 in progressed and 100 not in progressed, progressed
    assert not [s for s in tail.seen if isinstance(s.event, deployment_pb2.ModelDeployed)], tail.seen
    assert rolled.automatic and rolled.actor == "mlops-deployer", rolled
    assert rolled.to_version == baseline, rolled
    desired = mlops("rollout", "desired", model)
    serving = [
        (int(v["version"]), v["role"], v["trafficPercent"])
        for v in desired["versions"]
        if v["trafficPercent"]
    ]
    assert serving == [(baseline, "SERVING_ROLE_PRODUCTION", 100)], desired
    assert int(mlops("models", "show", f"{model}@production")["version"]) == baseline
    status = mlops("rollout", "status", model)
    assert status["state"] == "ROLLOUT_STATE_ROLLED_BACK", status
    assert int(status["candidateVersion"]) == candidate.version, status

    # The baseline answered throughout: a caller of v1 itself saw no failure, and the server counts
    # no failed call of it, whichever way it was called.
    assert production.answered > 0 and not production.failed, (production.failed, production.messages)
    baseline_failed = sum(
        n - before[key] for key, n in after.items() if key[0] == str(baseline) and key[1] != "OK"
    )
    assert baseline_failed == 0, {k: v for k, v in after.items() if k[0] == str(baseline)}
    assert stats.answered[str(baseline)] > 0, stats.answered
    assert stats.answered[str(candidate.version)] + stats.total_failed > 0, "the canary never served"
    return Outcome(
        rolled=rolled,
        candidate=candidate,
        stats=stats,
        baseline_failed=baseline_failed,
        production=production,
        seconds=rolled.rolled_back_at.ToDatetime().timestamp() - started_at,
        history=[move["reason"] for move in status.get("history", [])],
    )


def _report(title: str, served: Served, out: Outcome) -> None:
    health = out.rolled.candidate_health
    figures(
        title,
        rolled_back_after_s=f"{out.seconds:.1f}",
        canary_answered=out.stats.answered[str(out.candidate.version)],
        client_failed=out.stats.total_failed,
        baseline_answered=out.stats.answered[str(served.baseline)],
        baseline_failed=int(out.baseline_failed),
        production_calls=out.production.answered,
        production_failed=sum(out.production.failed.values()),
        canary_requests=health.request_count,
        canary_error_rate=f"{health.error_rate:.3f}",
        canary_p99_ms=f"{health.latency_p99_ms:.1f}",
        reason=repr(out.rolled.reason),
    )


@pytest.mark.timeout(420)
async def test_an_erroring_canary_is_rolled_back_and_production_never_fails(served):
    served.apply(min_requests=MIN_REQUESTS)
    out = await _roll_out_bad(
        served,
        lambda: register_erroring_candidate(served.model, served.baseline, served.data.features),
        "a candidate that fails every real call",
    )
    _report("R8 erroring canary", served, out)
    reason = out.rolled.reason
    assert "error rate" in reason and "max_error_rate" in reason and "step 1 of 2 (50%)" in reason, reason
    assert out.rolled.candidate_health.error_rate > MAX_ERROR_RATE, out.rolled.candidate_health
    # The client calling by name saw the canary's failures (the server says INTERNAL and keeps the
    # details in its log), none of the baseline's: those are counted apart above.
    assert out.stats.total_failed > 0, "the erroring canary never answered the client"
    assert set(out.stats.failed) == {"INTERNAL"}, (out.stats.failed, out.stats.messages)


@pytest.mark.timeout(300)
async def test_a_slow_canary_is_rolled_back_and_production_never_fails(served):
    served.apply(min_requests=MIN_REQUESTS)
    out = await _roll_out_bad(
        served,
        lambda: register_slow_candidate(
            served.model,
            served.baseline,
            served.data.features,
            iterations=ITERATIONS,
            max_p99_ms=MAX_P99_MS,
        ),
        "a candidate far slower than v1",
    )
    _report("R8 slow canary", served, out)
    reason = out.rolled.reason
    assert "p99 latency" in reason and "max_p99_latency_ms" in reason and "step 1 of 2 (50%)" in reason
    assert out.rolled.candidate_health.latency_p99_ms > MAX_P99_MS, out.rolled.candidate_health
    assert out.stats.total_failed == 0, (dict(out.stats.failed), out.stats.messages)


@pytest.mark.timeout(300)
async def test_a_silent_canary_is_rolled_back_after_its_health_timeout_and_production_never_fails(served):
    served.apply(min_requests=UNREACHABLE_MIN_REQUESTS)
    try:
        out = await _roll_out_bad(
            served,
            lambda: register_twin_candidate(served.model, served.baseline),
            "a candidate the monitor can never judge",
        )
    finally:
        served.apply(min_requests=MIN_REQUESTS)
    _report("R8 silent canary", served, out)
    words = re.compile(
        rf"no health verdict for {HEALTH_TIMEOUT_S} s after step 1 of 2 \(50%\): "
        rf"only \d+ of {UNREACHABLE_MIN_REQUESTS} requests; rolled back"
    )
    assert words.fullmatch(out.rolled.reason), out.rolled.reason
    assert any(r.startswith("holding at step 1 of 2 (50%)") for r in out.history), out.history
    # Not before the step's time and the timeout had passed, and not long after.
    assert STEP_SECONDS + HEALTH_TIMEOUT_S - 1 <= out.seconds < STEP_SECONDS + HEALTH_TIMEOUT_S + 15, (
        out.seconds
    )
    assert out.stats.total_failed == 0, (dict(out.stats.failed), out.stats.messages)
    assert out.stats.answered[str(out.candidate.version)] > 0, out.stats.answered


def _now_ms() -> int:
    return int(time.time() * 1000)
