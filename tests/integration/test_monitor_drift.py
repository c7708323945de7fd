"""The monitor against the real stack (see `monitor_helpers`): drift alarms and the retrain they
ask for, live accuracy and RMSE from ground truth, and the health figures of GetHealth.
"""

# The fixtures are imported from monitor_helpers, and pytest hands them to the tests by parameter name.
# ruff: noqa: F811

from __future__ import annotations

import asyncio
import contextlib
import io
import time
import uuid

import grpc
import numpy as np
import pandas as pd
import pytest

from mlops.events.v1 import common_pb2, data_pb2, monitoring_pb2, training_pb2
from mlops.monitor.v1 import monitor_pb2
from mlops.registry.v1 import registry_pb2 as pb
from tests.integration.bus_helpers import raw_reader, read_until
from tests.integration.conftest import TEST_TOPIC_PREFIX, eventually, jaeger_trace
from tests.integration.monitor_helpers import (
    CLASSES,
    FEATURES,
    batch_of,
    declare_model,
    declare_trained_model,
    drift_status,
    header,
    monitor,  # noqa: F401 - a shared fixture
    monitor_settings,
    publish_truth,
    publisher,  # noqa: F401 - a shared fixture
    records_for,
    registry,  # noqa: F401 - a shared fixture
    regression_of,
    running_monitor,
    shifted_frame,
    stack_monitor_paused,  # noqa: F401 - a shared fixture
    store,  # noqa: F401 - a shared fixture
    stream,
    training_frame,
)


async def test_traffic_from_the_training_distribution_raises_no_alarm(
    monitor, registry, store, publisher, kafka
):
    model = await declare_model(registry, store, uuid.uuid4().hex[:10])
    async with raw_reader(kafka, TEST_TOPIC_PREFIX + "mlops.drift.detected") as alarms:
        sent = await stream(publisher, model, training_frame, seconds=5.0)

        async def judged_windows():
            status = await drift_status(monitor, model.name)
            windows = [w for v in status.versions for w in v.windows if w.judged]
            return status if len(windows) >= 3 else None

        status = await eventually(judged_windows, timeout_s=20, what="three judged windows")
        with pytest.raises(AssertionError):
            await read_until(alarms, records_for(model.name), timeout_s=2)
    (version,) = status.versions
    assert version.version == 1 and version.method == "psi" and version.consecutive_windows == 0
    assert not version.HasField("last_alarm_at")
    for window in version.windows:
        assert not window.drifted
        assert {f.feature for f in window.features} == set(FEATURES)
        if window.judged:
            assert max(f.score for f in window.features) < 0.2
            assert window.prediction_drift_score < 0.2
    assert sum(w.sample_count for w in version.windows) <= sent


async def test_shifted_traffic_alarms_after_consecutive_windows_and_asks_for_a_retrain(
    monitor, registry, store, publisher, kafka, database, jaeger_url
):
    model = await declare_trained_model(
        registry, store, kafka, database, uuid.uuid4().hex[:10], consecutive=2
    )
    drift_topic = TEST_TOPIC_PREFIX + "mlops.drift.detected"
    retrain_topic = TEST_TOPIC_PREFIX + "mlops.retrain.requested"
    async with raw_reader(kafka, drift_topic) as alarms, raw_reader(kafka, retrain_topic) as retrains:
        publishing = asyncio.create_task(stream(publisher, model, shifted_frame, seconds=6.0))
        record = await read_until(alarms, records_for(model.name), timeout_s=30)
        retrain_record = await read_until(retrains, records_for(model.name), timeout_s=10)
        await publishing
    drift = monitoring_pb2.DriftDetected.FromString(record.value)
    assert drift.version == 1 and drift.method == "psi" and drift.threshold == pytest.approx(0.2)
    assert drift.consecutive_windows == 2
    assert {f.feature for f in drift.features} == set(FEATURES)
    scores = {f.feature: f for f in drift.features}
    assert scores["beta"].drifted and scores["gamma"].drifted
    assert not scores["delta"].drifted and scores["delta"].score < 0.2
    assert drift.sample_count >= 200 and drift.profile_sha256 == model.version.profile_sha256
    assert drift.window.end.ToSeconds() - drift.window.start.ToSeconds() == 1

    retrain = training_pb2.RetrainRequested.FromString(retrain_record.value)
    assert retrain.cause_event_id == header(record, "ce_id")
    assert retrain.trigger == common_pb2.TRAINING_TRIGGER_DRIFT and retrain.dataset_version == 0
    assert retrain.requested_by == "mlops-monitor" and retrain.version == 1
    assert retrain.window.end == drift.window.end
    assert retrain.window.end.ToSeconds() - retrain.window.start.ToSeconds() == 2  # both drifted windows
    assert "psi drift on" in retrain.reason

    status = await drift_status(monitor, model.name)
    (version,) = status.versions
    assert version.consecutive_windows >= 2 and version.HasField("last_alarm_at")

    # DriftDetected is published in the drift window's trace; that window's span links to the
    # traces of the inference-log batches it counted, and the retrain's trace starts with a span
    # that links to the window.
    drift_trace = header(record, "traceparent").split("-")[1]
    retrain_trace = header(retrain_record, "traceparent").split("-")[1]
    assert retrain_trace != drift_trace

    def window_span():
        spans = jaeger_trace(jaeger_url, drift_trace)
        return next((s for s in spans if s.name == f"drift window {model.name}"), None)

    window = await eventually(window_span, timeout_s=30, what="the drift window's span in Jaeger")
    assert int(window.attributes["mlops.model.version"]) == 1
    assert float(window.attributes["mlops.drift.psi.beta"]) > 0.2
    assert window.links, "the window span links to the batches it counted"

    def retrain_root():
        spans = jaeger_trace(jaeger_url, retrain_trace)
        return next((s for s in spans if s.name == f"request retrain {model.name}"), None)

    root = await eventually(retrain_root, timeout_s=30, what="the retrain's root span in Jaeger")
    assert (drift_trace, window.span_id) in root.links


async def test_assembled_dataset_policy_commits_labelled_drifted_traffic_as_the_retrains_one_intent(
    database, kafka, bus, store, publisher, registry
):
    settings = monitor_settings(retrain_dataset="assembled", retrain_min_labelled_rows=100)
    model = await declare_trained_model(
        registry, store, kafka, database, uuid.uuid4().hex[:10], consecutive=2
    )
    async with (
        running_monitor(database, kafka, bus, store, publisher, settings),
        raw_reader(kafka, TEST_TOPIC_PREFIX + "mlops.retrain.requested") as retrains,
        raw_reader(kafka, TEST_TOPIC_PREFIX + "mlops.data.committed") as commits,
        raw_reader(kafka, TEST_TOPIC_PREFIX + "mlops.drift.detected") as drifts,
    ):

        async def labelled_shifted_traffic():
            deadline = time.time() + 6
            while time.time() < deadline:
                frame = shifted_frame(model.rng, 80)
                prefix = uuid.uuid4().hex[:8]
                await publisher.publish(batch_of(model, frame, prefix=prefix))
                await publish_truth(publisher, model, prefix, frame["target"])
                await asyncio.sleep(0.1)

        publishing = asyncio.create_task(labelled_shifted_traffic())
        committed_record = await read_until(commits, records_for(model.dataset), timeout_s=40)
        await publishing
        drift = await read_until(drifts, records_for(model.name), timeout_s=10)
        # the same transaction wrote the alarm and the intent: had a RetrainRequested been written, it
        # would be on its topic by now
        stray = await retrains.getmany(timeout_ms=1000)
    assert not [r for records in stray.values() for r in records if r.key == model.name.encode()]
    committed = data_pb2.DataCommitted.FromString(committed_record.value)
    assert committed.parent_sha256 == model.dataset_version.sha256
    assert committed.committed_by == "mlops-monitor"
    assert committed.retrain.model == model.name and committed.retrain.model_version == 1
    assert committed.retrain.trigger == common_pb2.TRAINING_TRIGGER_DRIFT
    assert committed.retrain.cause_event_id == header(drift, "ce_id")
    assert "assembled from the drifted windows" in committed.retrain.reason
    assert committed.labels["model"] == model.name and committed.labels["model_version"] == "1"
    assert int(committed.labels["labelled_rows"]) >= 100
    assert committed.uri.endswith(f"datasets/{model.dataset}/{committed.sha256}/data.csv")
    data = await store.get_bytes(committed.uri, committed.sha256)  # verifies the sha256
    frame = pd.read_csv(io.BytesIO(data))
    assert list(frame.columns) == [*FEATURES, "target"]
    # Only the drifted windows' labelled rows: the retrained model's profile is the traffic it now sees.
    assert len(frame) == int(committed.labels["labelled_rows"])
    assert frame["beta"].mean() > 8  # the drifted rows, as logged
    # The monitor records nothing: the registry does, when it reads the commit.
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await registry.GetDatasetVersion(
            pb.GetDatasetVersionRequest(dataset=model.dataset, sha256=committed.sha256)
        )
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_ground_truth_gives_live_accuracy_and_degradation_after_consecutive_windows(
    monitor, registry, store, publisher, kafka, database, stack_monitor_paused
):
    model = await declare_trained_model(
        registry, store, kafka, database, uuid.uuid4().hex[:10], on_degradation="retrain", gate_min=0.8
    )

    async def traffic(*, truthful: bool, seconds: float):
        deadline = time.time() + seconds
        while time.time() < deadline:
            frame = training_frame(model.rng, 40)
            prefix = uuid.uuid4().hex[:8]
            batch = batch_of(model, frame, prefix=prefix)
            await publisher.publish(batch)
            truths = [r.label if truthful else CLASSES[1 - CLASSES.index(r.label)] for r in batch.records]
            await publish_truth(publisher, model, prefix, truths)
            await asyncio.sleep(0.1)

    async def live_accuracy():
        status = await drift_status(monitor, model.name)
        return status.versions and status.versions[0].live_metrics.get("accuracy")

    async def health_accuracy():
        health = await monitor.stub.GetHealth(monitor_pb2.GetHealthRequest(model=model.name, version=1))
        return health.health.metrics.get("accuracy")

    # Right answers go on until the monitor has judged them (a loaded machine may close a window
    # before enough of its labels arrive, so that window is not judged): conditions with deadlines.
    publishing = asyncio.create_task(traffic(truthful=True, seconds=90))
    try:
        assert await eventually(live_accuracy, timeout_s=45, what="live accuracy") == pytest.approx(1.0)
        assert await eventually(
            health_accuracy, timeout_s=30, what="accuracy in the health"
        ) == pytest.approx(1.0)
    finally:
        publishing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await publishing

    async with (
        raw_reader(kafka, TEST_TOPIC_PREFIX + "mlops.performance.degraded") as degradations,
        raw_reader(kafka, TEST_TOPIC_PREFIX + "mlops.retrain.requested") as retrains,
    ):
        # Wrong answers go on until the alarm is heard, for the same reason.
        publishing = asyncio.create_task(traffic(truthful=False, seconds=70))
        try:
            record = await read_until(degradations, records_for(model.name), timeout_s=60)
            retrain_record = await read_until(retrains, records_for(model.name), timeout_s=10)
        finally:
            publishing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await publishing
    degraded = monitoring_pb2.PerformanceDegraded.FromString(record.value)
    assert degraded.version == 1 and degraded.metric == "accuracy"
    assert degraded.observed == pytest.approx(0.0) and degraded.bound == pytest.approx(0.8)
    assert degraded.comparison == common_pb2.COMPARISON_GREATER_OR_EQUAL
    assert degraded.consecutive_windows == 2 and degraded.sample_count >= 20
    assert degraded.baseline == pytest.approx(0.95)
    retrain = training_pb2.RetrainRequested.FromString(retrain_record.value)
    assert retrain.trigger == common_pb2.TRAINING_TRIGGER_DEGRADATION
    assert retrain.cause_event_id == header(record, "ce_id")


async def test_get_health_figures_from_known_inputs(monitor, registry, store, publisher):
    model = await declare_model(registry, store, uuid.uuid4().hex[:10])
    rng = np.random.default_rng(7)
    now = time.time()
    n = 1000
    frame = training_frame(rng, n)
    latency = np.full(n, 3_000)
    latency[rng.choice(n, 15, replace=False)] = 90_000
    failed = np.zeros(n, dtype=bool)
    failed[rng.choice(n, 50, replace=False)] = True
    skewed = np.column_stack([np.full(n, 0.2), np.full(n, 0.8)])
    skewed[: n // 5] = [0.9, 0.1]  # the candidate says "yes" 80% of the time
    for chunk in range(4):
        rows = slice(chunk * 250, (chunk + 1) * 250)
        await publisher.publish(
            batch_of(
                model,
                frame.iloc[rows],
                version=2,
                at=now - 2 - chunk,
                sampling_rate=0.5,
                latency_us=latency[rows],
                failed=failed[rows],
                probabilities=skewed[rows],
            )
        )
    even = np.column_stack([np.full(400, 0.6), np.full(400, 0.4)])
    even[:200] = [0.4, 0.6]  # the baseline says "yes" half the time
    await publisher.publish(
        batch_of(model, training_frame(rng, 400), version=1, at=now - 3, probabilities=even)
    )

    async def health():
        reply = await monitor.stub.GetHealth(
            monitor_pb2.GetHealthRequest(model=model.name, version=2, window_seconds=30, baseline_version=1),
            timeout=1.0,
        )
        return reply if reply.sample_count == n and reply.HasField("prediction_drift") else None

    reply = await eventually(health, timeout_s=15, what="health of version 2")
    snapshot = reply.health
    assert snapshot.version == 2 and reply.baseline_version == 1
    assert snapshot.request_count == 2 * n  # scaled by 1 / sampling_rate
    assert snapshot.error_count == 100 and snapshot.error_rate == pytest.approx(0.05)
    assert snapshot.latency_p50_ms == pytest.approx(3.0, rel=0.05)
    assert snapshot.latency_p99_ms == pytest.approx(90.0, rel=0.05)
    assert snapshot.window.end.ToSeconds() - snapshot.window.start.ToSeconds() == 30
    ok = ~failed
    yes = int((skewed[ok].argmax(axis=1) == 1).sum())
    p, q = np.array([0.5, 0.5]), np.array([ok.sum() - yes, yes]) / ok.sum()
    assert reply.prediction_drift == pytest.approx(float(np.sum((q - p) * np.log(q / p))), rel=1e-6)

    quiet = await monitor.stub.GetHealth(monitor_pb2.GetHealthRequest(model=model.name, version=9))
    assert quiet.health.request_count == 0 and not quiet.HasField("prediction_drift")
    every = await monitor.stub.GetModelHealth(
        monitor_pb2.GetModelHealthRequest(model=model.name, window_seconds=30)
    )
    assert {v.version: v.request_count for v in every.versions} == {1: 400, 2: 2 * n}
    with pytest.raises(grpc.aio.AioRpcError) as unknown:
        await monitor.stub.GetHealth(
            monitor_pb2.GetHealthRequest(model=f"nobody-{uuid.uuid4().hex[:6]}", version=1)
        )
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as invalid:
        await monitor.stub.GetHealth(monitor_pb2.GetHealthRequest(model=model.name, version=0))
    assert invalid.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "version" in invalid.value.details()


async def test_regression_ground_truth_gives_live_rmse_and_health_compares_binned_outputs(
    monitor, registry, store, publisher, kafka, stack_monitor_paused
):
    gate = pb.GateSpec(metric="rmse", max=1.0)
    model = await declare_model(
        registry, store, uuid.uuid4().hex[:10], task="regression", gate=gate, on_degradation="alert"
    )
    # Version 2 predicts higher than version 1 on the same rows: its outputs, binned on the
    # baseline's profile bins, drift from the baseline's over the same interval.
    frame = training_frame(model.rng, 400)
    now = time.time()
    await publisher.publish(batch_of(model, frame, version=1, at=now - 1))
    await publisher.publish(
        batch_of(model, frame, version=2, at=now - 1, predictions=regression_of(frame) + 6)
    )

    async def drift_of_outputs():
        reply = await monitor.stub.GetHealth(
            monitor_pb2.GetHealthRequest(model=model.name, version=2, window_seconds=30, baseline_version=1)
        )
        return reply if reply.HasField("prediction_drift") else None

    reply = await eventually(drift_of_outputs, timeout_s=15, what="prediction drift of version 2")
    assert reply.prediction_drift > 1.0 and reply.health.request_count == 400

    async def traffic(*, error: float, seconds: float):
        deadline = time.time() + seconds
        while time.time() < deadline:
            frame = training_frame(model.rng, 40)
            truth = regression_of(frame)
            predicted = truth + error
            prefix = uuid.uuid4().hex[:8]
            await publisher.publish(batch_of(model, frame, prefix=prefix, predictions=predicted))
            await asyncio.gather(
                *(
                    publisher.publish(
                        monitoring_pb2.GroundTruthLogged(
                            model=model.name, request_id=f"{prefix}-{i}", value=v
                        )
                    )
                    for i, v in enumerate(truth.tolist())
                )
            )
            await asyncio.sleep(0.1)

    await traffic(error=0.5, seconds=2.0)

    async def live_rmse():
        status = await drift_status(monitor, model.name)
        return status.versions and status.versions[0].live_metrics.get("rmse")

    assert await eventually(live_rmse, timeout_s=45, what="live rmse") == pytest.approx(0.5, abs=1e-6)
    status = await drift_status(monitor, model.name)
    assert status.versions[0].live_metrics["mae"] == pytest.approx(0.5, abs=1e-6)

    async with raw_reader(kafka, TEST_TOPIC_PREFIX + "mlops.performance.degraded") as degradations:
        publishing = asyncio.create_task(traffic(error=3.0, seconds=5))
        record = await read_until(degradations, records_for(model.name), timeout_s=60)
        await publishing
    degraded = monitoring_pb2.PerformanceDegraded.FromString(record.value)
    assert degraded.metric == "rmse" and degraded.observed == pytest.approx(3.0, abs=1e-6)
    assert degraded.comparison == common_pb2.COMPARISON_LESS_OR_EQUAL and degraded.bound == 1.0
    assert degraded.baseline == pytest.approx(0.1)
