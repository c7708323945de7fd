"""The monitor's integration harness, shared by the test_monitor_* modules.

Each test declares its own model (a spec with short monitoring windows and a registered version
whose training profile is computed here from synthetic data), runs the monitor in-process on the
`tests.` topics with a consumer group of its own, publishes `InferenceLogged` batches and
`GroundTruthLogged` labels itself, and reads what the monitor concludes from Kafka, its gRPC API,
the registry and Jaeger. This module holds the model under watch, the monitor wired as its
composition root wires it, and the fixtures.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pandas as pd
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mlops.bus import EventConsumer, EventPublisher, Inbox, OutboxRelay
from mlops.db import migrate
from mlops.events.v1 import common_pb2, monitoring_pb2
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
from services.monitor.core import MonitorCore
from services.monitor.handlers import MonitorHandlers
from services.monitor.ingest import InferenceLogIngest, inference_group
from services.monitor.performance import PerformanceTracker
from services.monitor.servicer import MonitorServicer
from services.monitor.settings import MonitorSettings
from services.monitor.tables import SCHEMA
from tests.integration.conftest import TEST_TOPIC_PREFIX

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


# --- models trained by the platform, and outside models with text inputs -------------------------


async def declare_trained_model(registry, store, kafka, database, unique: str, **options) -> Model:
    """`declare_model`, then its spec applied again as one the platform trains (`training.external`
    false), so that an alarm asks for a retrain. The stack's trainer must not train the synthetic
    model: the spec changes only once the trainer has handled the data set's DatasetVersionRecorded
    (its inbox holds the event), when it found the spec saying the model is trained elsewhere."""
    from sqlalchemy import text

    from tests.integration.bus_helpers import raw_reader, read_until
    from tests.integration.conftest import eventually

    async with raw_reader(kafka, "mlops.dataset.recorded") as recorded:
        model = await declare_model(registry, store, unique, **options)
        record = await read_until(recorded, records_for(model.dataset), timeout_s=30)
    event_id = header(record, "ce_id")

    async def handled() -> bool:
        async with database.session() as session:
            found = await session.exec(
                text("SELECT 1 FROM trainer.inbox WHERE event_id = :id"), params={"id": event_id}
            )
            return found.first() is not None

    await eventually(handled, timeout_s=60, what="the trainer's handling of the data set's record")
    spec = (await registry.GetModelSpec(pb.GetModelSpecRequest(model=model.name))).spec
    spec.spec.training.external = False
    await registry.ApplyModelSpec(pb.ApplyModelSpecRequest(spec=spec, applied_by="tests"))
    return model


REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def stack_monitor_paused():
    """The stack's own monitor stopped for the test, and started again after it (ready before the next).

    Performance windows live in the monitor's tables, which every monitor shares, as replicas do: the
    stack's monitor would join the test's labels and close its windows as readily as the test's own,
    publish the alarms on the stack's topics instead of the test's, and keep the figures in its own
    memory. A test that judges ground truth must be the only monitor judging it."""
    down = subprocess.run(
        ["bash", "infra/local/services.sh", "down", "monitor"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert down.returncode == 0, down.stdout + down.stderr
    try:
        yield
    finally:
        up = subprocess.run(
            ["bash", "infra/local/services.sh", "up", "monitor"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert up.returncode == 0, up.stdout + up.stderr
