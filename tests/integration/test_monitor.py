"""The monitor against the real stack: the registry service, PostgreSQL, Kafka, S3 and Jaeger.

Each test declares its own model (a spec with short monitoring windows and a registered version
whose training profile is computed here from synthetic data), runs the monitor in-process on the
`tests.` topics with a consumer group of its own, publishes `InferenceLogged` batches and
`GroundTruthLogged` labels itself, and reads what the monitor concludes from Kafka, its gRPC API,
the registry and Jaeger.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime

import grpc
import numpy as np
import pandas as pd
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy import text

from mlops.bus import EventConsumer, EventPublisher, Inbox, OutboxRelay
from mlops.db import migrate
from mlops.events.v1 import common_pb2, data_pb2, monitoring_pb2, training_pb2
from mlops.grpc import GrpcServer, open_channel
from mlops.monitor.v1 import monitor_pb2, monitor_pb2_grpc
from mlops.outbox import Outbox
from mlops.profile import ReferenceProfile
from mlops.registry.v1 import registry_pb2 as pb
from mlops.registry.v1 import registry_pb2_grpc
from mlops.settings import GrpcServerSettings
from mlops.store import open_store
from services.monitor.__main__ import MIGRATIONS, GroundTruthLoop
from services.monitor.clients import ModelCatalog, RegistryClient
from services.monitor.core import CountedBatch, MonitorCore
from services.monitor.handlers import MonitorHandlers
from services.monitor.ingest import InferenceLogIngest, inference_group
from services.monitor.performance import PerformanceTracker
from services.monitor.predictions import PredictionBatch
from services.monitor.servicer import MonitorServicer
from services.monitor.settings import MonitorSettings
from services.monitor.tables import SCHEMA
from tests.integration.bus_helpers import raw_reader, read_until
from tests.integration.conftest import TEST_TOPIC_PREFIX, eventually, jaeger_trace

TOPIC = TEST_TOPIC_PREFIX + "mlops.inference.logged"
FEATURES = ["alpha", "beta", "gamma", "delta"]
CLASSES = ["no", "yes"]


# --- the model under watch -----------------------------------------------------------------------


def training_frame(rng: np.random.Generator, n: int) -> pd.DataFrame:
    frame = pd.DataFrame(
        {
            "alpha": rng.normal(0, 1, n),
            "beta": rng.normal(5, 2, n),
            "gamma": rng.exponential(1.0, n),
            "delta": rng.uniform(-1, 1, n),
        }
    )
    frame["target"] = np.where(frame["alpha"] + 0.2 * frame["beta"] > 1.0, "yes", "no")
    return frame


def probabilities_of(frame: pd.DataFrame) -> np.ndarray:
    """The synthetic model: a logistic of the rule that made the labels."""
    z = 3 * (frame["alpha"].to_numpy() + 0.2 * frame["beta"].to_numpy() - 1.0)
    yes = 1 / (1 + np.exp(-z))
    return np.column_stack([1 - yes, yes])


def regression_of(frame: pd.DataFrame) -> np.ndarray:
    """The synthetic regression model."""
    return 2 * frame["alpha"].to_numpy() + frame["beta"].to_numpy()


@dataclass
class Model:
    name: str
    dataset: str
    dataset_version: pb.DatasetVersion
    version: pb.ModelVersion
    rng: np.random.Generator
    task: str = "classification"


async def declare_model(
    registry: registry_pb2_grpc.RegistryStub,
    store,
    unique: str,
    *,
    window_seconds: int = 1,
    method: str = "psi",
    threshold: float = 0.2,
    consecutive: int = 2,
    min_samples: int = 200,
    on_drift: str = "retrain",
    on_degradation: str = "alert",
    gate_min: float = 0.8,
    task: str = "classification",
    gate: pb.GateSpec | None = None,
) -> Model:
    rng = np.random.default_rng(abs(hash(unique)) % 2**32)
    name = f"mon-{unique}"
    frame = training_frame(rng, 3000)
    regression = task == "regression"
    if regression:
        frame["target"] = regression_of(frame) + rng.normal(0, 0.1, len(frame))
    data = frame.to_csv(index=False).encode()
    ref = await store.put_bytes(f"datasets/{name}", "data.csv", data)
    recorded = await registry.RecordDatasetVersion(
        pb.RecordDatasetVersionRequest(
            dataset=name, uri=ref.uri, sha256=ref.sha256, format="csv", committed_by="tests"
        )
    )
    body = pb.ModelSpecBody(
        dataset=name, task=task, label="target", gate=gate or pb.GateSpec(metric="accuracy", min=gate_min)
    )
    body.monitor.window_seconds = window_seconds
    body.monitor.method = method
    body.monitor.threshold = threshold
    body.monitor.consecutive_windows = consecutive
    body.monitor.min_samples = min_samples
    body.monitor.on_drift = on_drift
    body.monitor.on_degradation = on_degradation
    spec = pb.ModelSpec(
        api_version="mlops/v1", kind="ModelSpec", metadata=pb.ObjectMeta(name=name), spec=body
    )
    # versions are registered here by hand: the stack's trainer must not train this model too
    spec.spec.training.external = True
    applied = await registry.ApplyModelSpec(pb.ApplyModelSpecRequest(spec=spec, applied_by="tests"))
    profile = ReferenceProfile.compute(
        task=task,
        features=frame[FEATURES].to_numpy(),
        feature_names=FEATURES,
        categorical={},
        predictions=regression_of(frame) if regression else probabilities_of(frame),
        class_labels=[] if regression else CLASSES,
    )
    model_ref = await store.put_bytes(
        f"models/{name}", "model.onnx", b"not a real model: the monitor never runs it"
    )
    profile_ref = await store.put_bytes(f"models/{name}", "profile.json", profile.to_json().encode())
    signature = pb.ModelSignature(
        inputs=[pb.TensorSpec(name="input", datatype="FP32", shape=[-1, len(FEATURES)])],
        outputs=[
            pb.TensorSpec(name="prediction", datatype="FP32", shape=[-1])
            if regression
            else pb.TensorSpec(name="probabilities", datatype="FP32", shape=[-1, 2])
        ],
        feature_names=FEATURES,
        class_labels=[] if regression else CLASSES,
        task=task,
        onnx_opset=17,
    )
    versions = []
    for _ in range(2):
        reply = await registry.RegisterModelVersion(
            pb.RegisterModelVersionRequest(
                model=name,
                run_id=uuid.uuid4().hex,
                spec_version=applied.spec_version,
                dataset=name,
                dataset_version=recorded.dataset_version.version,
                dataset_sha256=recorded.dataset_version.sha256,
                artifact_uri=model_ref.uri,
                artifact_sha256=model_ref.sha256,
                artifact_size_bytes=model_ref.size,
                profile_uri=profile_ref.uri,
                profile_sha256=profile_ref.sha256,
                signature=signature,
                metrics={"rmse": 0.1} if regression else {"accuracy": 0.95},
            )
        )
        versions.append(reply.model_version)
    return Model(name, name, recorded.dataset_version, versions[0], rng, task)


def _timestamp(seconds: float) -> Timestamp:
    stamp = Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


def batch_of(
    model: Model,
    frame: pd.DataFrame,
    *,
    version: int = 1,
    at: float | None = None,
    sampling_rate: float = 1.0,
    latency_us: np.ndarray | None = None,
    failed: np.ndarray | None = None,
    probabilities: np.ndarray | None = None,
    prefix: str = "",
    predictions: np.ndarray | None = None,
) -> monitoring_pb2.InferenceLogged:
    """One logged batch of `frame`'s rows, columns in an order of their own (the monitor maps by name).
    A regression model's outputs are `predictions` (its own by default)."""
    names = ["delta", "alpha", "gamma", "beta"]
    at = time.time() if at is None else at
    regression = model.task == "regression"
    if regression:
        predictions = regression_of(frame) if predictions is None else predictions
    else:
        probabilities = probabilities_of(frame) if probabilities is None else probabilities
    batch = monitoring_pb2.InferenceLogged(
        model=model.name,
        feature_names=names,
        class_labels=[] if regression else CLASSES,
        sampling_rate=sampling_rate,
        server_id="tests",
    )
    values = frame[names].to_numpy()
    prefix = prefix or uuid.uuid4().hex[:8]
    for i in range(len(frame)):
        bad = failed is not None and failed[i]
        batch.records.add(
            request_id=f"{prefix}-{i}",
            version=version,
            timestamp=_timestamp(at),
            features=values[i].tolist(),
            outputs=[] if bad else ([float(predictions[i])] if regression else probabilities[i].tolist()),
            label="" if bad or regression else CLASSES[int(probabilities[i, 1] > 0.5)],
            latency_us=int(latency_us[i]) if latency_us is not None else 2_000,
            error="INTERNAL: failed" if bad else "",
            role=common_pb2.SERVING_ROLE_PRODUCTION,
        )
    return batch


# --- the monitor, wired as its composition root wires it -----------------------------------------


@dataclass
class Monitor:
    core: MonitorCore
    ingest: InferenceLogIngest
    stub: monitor_pb2_grpc.MonitorStub
    group: str
    address: str


@pytest.fixture(scope="module")
async def registry():
    channel = open_channel(os.environ.get("MLOPS_REGISTRY_ADDR", "127.0.0.1:50051"))
    try:
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    except grpc.aio.AioRpcError as error:
        pytest.fail(
            f"the registry is not answering ({error.code().name}); run `make up` first", pytrace=False
        )
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    yield registry_pb2_grpc.RegistryStub(channel)
    await channel.close()


@pytest.fixture(scope="module")
async def publisher(kafka, bus, telemetry):
    pub = EventPublisher(kafka, bus, source="mlops-monitor-tests")
    await pub.start()
    yield pub
    await pub.stop()


@pytest.fixture(scope="module")
def store(artifact_settings):
    return open_store(artifact_settings)


def monitor_settings(**overrides) -> MonitorSettings:
    values = dict(
        metrics_port=None,
        grpc_port=0,
        consumer_group=f"tests-monitor-{uuid.uuid4().hex[:8]}",
        start_from="latest",
        flush_interval_ms=200,
        tick_interval_ms=100,
        window_grace_ms=300,
        retrain_dataset="latest",
        alarm_cooldown_s=3600,
        min_labels_per_window=20,
    )
    values.update(overrides)
    return MonitorSettings(**values)


@contextlib.asynccontextmanager
async def running_monitor(
    database, kafka, bus, store, publisher, settings: MonitorSettings
) -> AsyncIterator[Monitor]:
    await migrate(database, MIGRATIONS, SCHEMA)
    channel = open_channel(settings.registry_addr)
    registry = RegistryClient(channel)
    catalog = ModelCatalog(registry, store, spec_ttl_s=settings.spec_cache_s, unknown_ttl_s=1.0)
    outbox = Outbox(SCHEMA, source="mlops-monitor-tests", topic_prefix=bus.topic_prefix)
    group = inference_group(settings)
    core = MonitorCore(
        database=database,
        outbox=outbox,
        catalog=catalog,
        registry=registry,
        store=store,
        settings=settings,
        consumer_group=group,
    )
    tracker = PerformanceTracker(
        database=database, outbox=outbox, catalog=catalog, core=core, settings=settings
    )
    truth = EventConsumer(
        kafka,
        bus,
        group_id=settings.consumer_group,
        publisher=publisher,
        database=database,
        inbox=Inbox(SCHEMA),
        from_end=True,
    )
    truth.subscribe(monitoring_pb2.GroundTruthLogged, MonitorHandlers(tracker).on_ground_truth)
    server = GrpcServer(GrpcServerSettings(host="127.0.0.1", port=0))
    server.add(
        lambda s: monitor_pb2_grpc.add_MonitorServicer_to_server(MonitorServicer(core), s),
        monitor_pb2.DESCRIPTOR.services_by_name["Monitor"].full_name,
    )
    port = await server.start()
    ingest = InferenceLogIngest(kafka, bus, core=core, publisher=publisher, settings=settings)
    await ingest.start()
    await truth.start()
    await truth.wait_assigned()
    relay = OutboxRelay(database, SCHEMA, publisher, bus)
    loop = GroundTruthLoop(tracker, settings.tick_interval_ms / 1000)
    tasks = [
        asyncio.create_task(ingest.run()),
        asyncio.create_task(truth.run()),
        asyncio.create_task(relay.run()),
        asyncio.create_task(loop.run()),
    ]
    await ingest.wait_assigned()
    client = open_channel(f"127.0.0.1:{port}")
    try:
        yield Monitor(core, ingest, monitor_pb2_grpc.MonitorStub(client), group, f"127.0.0.1:{port}")
    finally:
        await client.close()
        await server.stop()
        await truth.stop()
        await ingest.stop()
        await loop.stop()
        await relay.stop()
        await asyncio.gather(*tasks, return_exceptions=True)
        await channel.close()


@pytest.fixture
async def monitor(database, kafka, bus, store, publisher):
    async with running_monitor(database, kafka, bus, store, publisher, monitor_settings()) as running:
        yield running


async def stream(
    publisher, model: Model, make_frame, *, seconds: float, rows_per_batch: int = 80, every_s=0.1
):
    """Publish batches for `seconds`, stamped with the time they are sent; returns the rows sent."""
    sent = 0
    deadline = time.time() + seconds
    while time.time() < deadline:
        frame = make_frame(model.rng, rows_per_batch)
        await publisher.publish(batch_of(model, frame))
        sent += len(frame)
        await asyncio.sleep(every_s)
    return sent


def shifted_frame(rng: np.random.Generator, n: int) -> pd.DataFrame:
    frame = training_frame(rng, n)
    frame["beta"] = frame["beta"] + 4.0
    frame["gamma"] = frame["gamma"] * 3.0
    return frame


async def publish_truth(publisher, model: Model, prefix: str, truths) -> None:
    """Labels for the rows of one batch, published together (each awaits its acknowledgement)."""
    await asyncio.gather(
        *(
            publisher.publish(
                monitoring_pb2.GroundTruthLogged(model=model.name, request_id=f"{prefix}-{i}", label=truth)
            )
            for i, truth in enumerate(truths)
        )
    )


def records_for(model: str):
    def matches(record) -> bool:
        return record.key is not None and record.key.decode() == model

    return matches


def header(record, name: str) -> str:
    return next(value.decode() for key, value in record.headers if key == name)


async def drift_status(monitor: Monitor, model: str) -> monitor_pb2.GetDriftStatusResponse:
    return await monitor.stub.GetDriftStatus(monitor_pb2.GetDriftStatusRequest(model=model, window_limit=50))


# --- the tests -----------------------------------------------------------------------------------


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
    monitor, registry, store, publisher, kafka, jaeger_url
):
    model = await declare_model(registry, store, uuid.uuid4().hex[:10], consecutive=2)
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
    model = await declare_model(registry, store, uuid.uuid4().hex[:10], consecutive=2)
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
    monitor, registry, store, publisher, kafka
):
    model = await declare_model(
        registry, store, uuid.uuid4().hex[:10], on_degradation="retrain", gate_min=0.8
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

    await traffic(truthful=True, seconds=2.5)

    async def live_accuracy():
        status = await drift_status(monitor, model.name)
        return status.versions and status.versions[0].live_metrics.get("accuracy")

    assert await eventually(live_accuracy, timeout_s=45, what="live accuracy") == pytest.approx(1.0)
    health = await monitor.stub.GetHealth(monitor_pb2.GetHealthRequest(model=model.name, version=1))
    assert health.health.metrics["accuracy"] == pytest.approx(1.0)

    async with (
        raw_reader(kafka, TEST_TOPIC_PREFIX + "mlops.performance.degraded") as degradations,
        raw_reader(kafka, TEST_TOPIC_PREFIX + "mlops.retrain.requested") as retrains,
    ):
        publishing = asyncio.create_task(traffic(truthful=False, seconds=5))
        record = await read_until(degradations, records_for(model.name), timeout_s=60)
        retrain_record = await read_until(retrains, records_for(model.name), timeout_s=10)
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


async def test_a_malformed_batch_goes_to_the_dlq_with_its_reason_and_ingest_goes_on(
    monitor, registry, store, publisher, kafka
):
    model = await declare_model(registry, store, uuid.uuid4().hex[:10])
    bad = batch_of(model, training_frame(model.rng, 5))
    bad.records[3].features.append(1.0)
    unknown = batch_of(model, training_frame(model.rng, 5), version=99)
    async with raw_reader(kafka, TOPIC + ".dlq") as dlq:
        await publisher.publish(bad)
        await publisher.publish(unknown)
        await publisher.publish_encoded(
            TOPIC, model.name, b"\xff\xff not protobuf", [("ce_type", b"mlops.inference.logged.v1")]
        )
        first = await read_until(dlq, records_for(model.name), timeout_s=15)
        second = await read_until(dlq, records_for(model.name), timeout_s=15)
        third = await read_until(dlq, records_for(model.name), timeout_s=15)
    reasons = [header(r, "mlops_dlq_reason") for r in (first, second, third)]
    assert "record 3" in reasons[0] and "has 5 features; feature_names lists 4" in reasons[0]
    assert f"model {model.name!r} has no version 99" in reasons[1]
    assert "does not parse as InferenceLogged" in reasons[2]
    assert header(first, "mlops_dlq_consumer") == monitor.group

    good = batch_of(model, training_frame(model.rng, 7), at=time.time())
    await publisher.publish(good)

    async def counted():
        return any(w.samples == 7 for (m, _, _), w in monitor.core.windows.items() if m == model.name) or any(
            w.sample_count == 7 for v in (await drift_status(monitor, model.name)).versions for w in v.windows
        )

    await eventually(counted, timeout_s=15, what="the good batch counted after the bad ones")


async def _window_row(database, group: str, model: str):
    async with database.session() as session:
        return (
            await session.exec(
                text(
                    f"SELECT sample_count, closed, body FROM {SCHEMA}.windows "
                    "WHERE consumer_group = :g AND model = :m"
                ),
                params={"g": group, "m": model},
            )
        ).all()


async def test_a_restart_mid_window_keeps_its_counts_without_counting_twice(
    database, kafka, bus, store, publisher, registry
):
    """The monitor is stopped mid-window twice: once cleanly, once as by a crash (its last batch
    counted in memory but never committed). The window closes with every row counted exactly once."""
    model = await declare_model(registry, store, uuid.uuid4().hex[:10], window_seconds=20, min_samples=10)
    settings = monitor_settings(flush_interval_ms=60_000)  # commits only on stop and on closing
    start = (int(time.time()) // 20 + 1) * 20  # the next window: it cannot close during the test
    published = 0

    async def publish(n: int) -> None:
        nonlocal published
        await publisher.publish(batch_of(model, training_frame(model.rng, n), at=start + 1))
        published += n

    async with running_monitor(database, kafka, bus, store, publisher, settings) as first:
        await publish(120)
        await eventually(
            lambda: sum(w.samples for w in first.core.windows.values()) == 120, what="first batch"
        )
    rows = await _window_row(database, first.group, model.name)
    assert [(r[0], r[1]) for r in rows] == [(120, False)]  # committed on stop, still open

    async with running_monitor(database, kafka, bus, store, publisher, settings) as second:
        assert sum(w.samples for w in second.core.windows.values()) == 120  # resumed from PostgreSQL
        await publish(80)
        await eventually(
            lambda: sum(w.samples for w in second.core.windows.values()) == 200, what="second batch"
        )
        # A crash: what is in memory is lost, nothing more is committed.
        second.core.write = _refuse_commit  # type: ignore[method-assign]
        second.ingest._stopping.set()
    rows = await _window_row(database, second.group, model.name)
    assert [(r[0], r[1]) for r in rows] == [(120, False)]

    async with running_monitor(
        database, kafka, bus, store, publisher, monitor_settings(consumer_group=settings.consumer_group)
    ) as third:
        await eventually(
            lambda: sum(w.samples for w in third.core.windows.values()) == 200,
            what="the lost batch read again",
        )
        await publish(50)
        await eventually(
            lambda: sum(w.samples for w in third.core.windows.values()) == 250, what="third batch"
        )
        third.core.settings = monitor_settings(consumer_group=settings.consumer_group, window_grace_ms=0)
        closed = await third.ingest.flush(start + 21)
        assert closed == 1
        # Rows of the window that arrive after it closed count for health, and as late, not for drift.
        await publisher.publish(batch_of(model, training_frame(model.rng, 5), at=start + 1))

        async def late_rows():
            status = await drift_status(third, model.name)
            return status.versions[0].windows[0].late_count == 5

        await eventually(late_rows, timeout_s=15, what="the late rows counted")
    rows = await _window_row(database, third.group, model.name)
    ((samples, is_closed, body),) = rows
    assert is_closed and samples == published == 250
    window = monitor_pb2.DriftWindow.FromString(body)
    assert window.sample_count == 250 and window.judged and not window.drifted
    # The predictions copied ahead into the crashed commit's transaction were never kept: each
    # request id is stored once, the late rows' included.
    assert await _stored_predictions(database, model.name) == (255, 255)


async def _refuse_commit(*_, **__):
    raise RuntimeError("the process is gone")


async def _stored_predictions(database, model: str) -> tuple[int, int]:
    """Stored predictions of `model`, and how many distinct request ids they have."""
    async with database.session() as session:
        return tuple(
            (
                await session.exec(
                    text(
                        f"SELECT count(*), count(DISTINCT r.request_id) FROM {SCHEMA}.prediction_requests r "
                        f"JOIN {SCHEMA}.prediction_batches b ON b.id = r.batch_id WHERE b.model = :m"
                    ),
                    params={"m": model},
                )
            ).one()
        )


async def test_a_commit_whose_staged_transaction_broke_is_written_again_with_every_prediction(
    database, store
):
    """Predictions are copied into the next commit's transaction before it commits; when its
    connection dies (PostgreSQL restarted), the commit fails and its retry writes them all, once."""
    await migrate(database, MIGRATIONS, SCHEMA)
    settings = monitor_settings()
    core = MonitorCore(
        database=database,
        outbox=Outbox(SCHEMA, source="mlops-monitor-tests"),
        catalog=None,  # type: ignore[arg-type]  # a commit that closes no window asks the registry nothing
        registry=None,  # type: ignore[arg-type]
        store=store,
        settings=settings,
        consumer_group=inference_group(settings),
    )
    model = f"tests-staged-{uuid.uuid4().hex[:8]}"

    def counted(first: int, n: int) -> CountedBatch:
        now = time.time()
        batch = PredictionBatch.of(
            model=model,
            version=1,
            logged_at=datetime.fromtimestamp(now, UTC),
            request_ids=[f"{model}-{first + i}" for i in range(n)],
            timestamps=np.full(n, now),
            class_labels=CLASSES,
            classes=np.arange(n) % 2,
            predictions=None,
            features=np.zeros((n, len(FEATURES))),
        )
        return CountedBatch(predictions=[batch], rows=n, model=model)

    core.merge(counted(0, 60))
    core.stage()
    staging = core.staging
    assert staging is not None
    session = await staging.session()
    assert staging.copied == 1
    core.merge(counted(60, 40))  # counted after the copy: the commit writes it itself
    raw = await (await session.connection()).get_raw_connection()
    async with database.transaction() as other:
        await other.exec(
            text("SELECT pg_terminate_backend(:pid)"), params={"pid": raw.driver_connection.get_server_pid()}
        )
    plan = core.snapshot()
    with pytest.raises(Exception):  # noqa: B017 - whatever the driver makes of a dead connection
        await core.write(plan)
    assert await _stored_predictions(database, model) == (0, 0)
    await core.write(plan)
    assert await _stored_predictions(database, model) == (100, 100)


async def test_regression_ground_truth_gives_live_rmse_and_health_compares_binned_outputs(
    monitor, registry, store, publisher, kafka
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
