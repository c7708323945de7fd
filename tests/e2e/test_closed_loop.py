"""The closed loop through the running platform, asserted through its public surfaces only (the CLI,
Kafka topics, the Open Inference Protocol, Jaeger's API): data committed → trained → evaluated →
production → client traffic → drift → retrain on the drifted, labelled traffic → evaluation against
the champion → canary → a new production version; one trace per turn of the loop, none orphaned,
and the retrain's trace linked to the drift window that caused it."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_wine

from mlops.demo.loop import EventTail, Traffic, shift_features, wait_ready
from mlops.events.v1 import data_pb2, deployment_pb2, evaluation_pb2, monitoring_pb2, training_pb2
from mlops.jaeger import TRACE_TAG
from tests.e2e.conftest import mlops
from tests.integration.conftest import eventually, jaeger_trace

SPEC = """apiVersion: mlops/v1
kind: ModelSpec
metadata: {{name: {model}}}
spec:
  dataset: {dataset}
  task: classification
  label: target
  training: {{hidden_layers: [32], epochs: 60, learning_rate: 0.01, batch_size: 32, seed: 7}}
  gate: {{metric: accuracy, min: 0.8, max_regression: 0.02, max_p99_latency_ms: 50}}
  rollout: {{strategy: canary, steps: [50, 100], step_seconds: 3, max_error_rate: 0.05, max_p99_latency_ms: 200, min_requests: 10}}
  monitor: {{window_seconds: 3, method: psi, threshold: 0.2, consecutive_windows: 2, on_drift: retrain, min_samples: 40}}
"""

FOLLOWED = [
    data_pb2.DataCommitted,
    training_pb2.ModelTrained,
    evaluation_pb2.ModelEvaluated,
    deployment_pb2.RolloutProgressed,
    deployment_pb2.ModelDeployed,
    deployment_pb2.ModelRolledBack,
    monitoring_pb2.DriftDetected,
    training_pb2.RetrainRequested,
]
EVERY_SERVICE = {"mlops-registry", "mlops-trainer", "mlops-evaluator", "mlops-deployer", "mlops-inference"}


@pytest.mark.timeout(600)
async def test_drift_retrains_and_the_new_version_reaches_production_in_one_linked_trace(
    unique, tmp_path: Path, jaeger_url
):
    model, dataset = f"loop-{unique}", f"loopdata-{unique}"
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC.format(model=model, dataset=dataset))
    mlops("apply", "-f", str(spec))
    frame = load_wine(as_frame=True).frame
    columns = [c for c in frame.columns if c != "target"]
    features = frame[columns].to_numpy(np.float32)
    labels = [str(v) for v in frame["target"]]
    data = tmp_path / "wine.csv"
    frame.to_csv(data, index=False)

    tail = EventTail(FOLLOWED, keys=[model, dataset], since_ms=int(time.time() * 1000) - 1000)
    await tail.start()
    traffic = Traffic(model=model, features=features, labels=labels, rate_per_s=40)
    try:
        committed = mlops("data", "commit", str(data), "--dataset", dataset)
        first = (await tail.wait_for(deployment_pb2.ModelDeployed, timeout_s=240)).event
        assert first.version == 1 and first.previous_version == 0

        await wait_ready(model, first.version)
        traffic.start()
        # Traffic drawn from the training data: whole windows pass without an alarm.
        calm_until = time.monotonic() + 4 * 3
        while time.monotonic() < calm_until:
            await tail.poll()
        assert not [s for s in tail.seen if isinstance(s.event, monitoring_pb2.DriftDetected)]

        traffic.shift = shift_features(
            columns,
            {"alcohol": 2.5, "flavanoids": 2.5, "color_intensity": 2.5, "proline": 2.5},
            features.std(axis=0),
        )
        drift = await tail.wait_for(monitoring_pb2.DriftDetected, timeout_s=90)
        assert drift.event.version == first.version and drift.event.consecutive_windows >= 2
        assert {f.feature for f in drift.event.features} == set(columns)
        assert {f.feature for f in drift.event.features if f.drifted} >= {"alcohol", "proline"}

        second = (
            await tail.wait_for(
                evaluation_pb2.ModelEvaluated, lambda e: e.version > first.version, timeout_s=240
            )
        ).event
        assert second.passed, [g.message for g in second.gates]
        assert second.champion_version == first.version
        deployed = (
            await tail.wait_for(
                deployment_pb2.ModelDeployed, lambda e: e.version == second.version, timeout_s=120
            )
        ).event
        assert deployed.previous_version == first.version and deployed.strategy == "canary"
    finally:
        stats = await traffic.stop()
        await tail.stop()

    # Production never stopped answering while versions swapped under it.
    assert stats.total_failed == 0, stats.messages
    assert set(stats.answered) >= {str(first.version)}
    steps = [
        s.event.traffic_percent
        for s in tail.seen
        if isinstance(s.event, deployment_pb2.RolloutProgressed)
        and s.event.candidate_version == second.version
    ]
    assert 50 in steps and 100 in steps, steps
    # The retrain trained on a data set version assembled from the drifted, labelled traffic.
    retrain_data = [
        s.event
        for s in tail.seen
        if isinstance(s.event, data_pb2.DataCommitted) and s.event.committed_by == "mlops-monitor"
    ]
    assert retrain_data and retrain_data[0].sha256 == second.dataset_sha256

    # The first turn: one trace from the data commit through every service, no orphan.
    await _whole_trace(jaeger_url, committed["traceId"], EVERY_SERVICE | {"mlops-cli"})
    # The second turn: its trace holds the monitor too, and links to the drift window behind it.
    shown = mlops("models", "show", f"{model}@{second.version}")
    retrain_trace_id = shown["tags"][TRACE_TAG]
    retrain_trace = await _whole_trace(jaeger_url, retrain_trace_id, EVERY_SERVICE | {"mlops-monitor"})
    linked = [link for span in retrain_trace for link in span.links]
    assert linked, "the retrain's trace links to nothing"
    windows = [
        span
        for trace_id, span_id in linked
        for span in jaeger_trace(jaeger_url, trace_id)
        if span.span_id == span_id and span.service == "mlops-monitor"
    ]
    assert windows, f"no link of the retrain's trace leads to a monitor span: {linked}"
    assert any(str(first.version) == str(span.attributes.get("mlops.model.version")) for span in windows)


async def _whole_trace(jaeger_url: str, trace_id: str, services: set[str]):
    """The trace once it holds every service's spans and no span whose parent is missing (services
    export in batches, so a child can arrive before its parent: wait for both, with a deadline)."""
    last: dict = {}

    def complete():
        spans = jaeger_trace(jaeger_url, trace_id)
        ids = {span.span_id for span in spans}
        last["missing"] = services - {span.service for span in spans}
        last["orphans"] = [f"{s.service}: {s.name}" for s in spans if s.parent_id and s.parent_id not in ids]
        return spans if not last["missing"] and not last["orphans"] else None

    try:
        return await eventually(complete, timeout_s=60, interval_s=1, what=f"trace {trace_id}")
    except AssertionError as error:
        raise AssertionError(
            f"trace {trace_id}: services missing {last.get('missing')}, orphan spans {last.get('orphans')}"
        ) from error
