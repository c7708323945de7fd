"""The deployer's harness for the integration tests against the real stack: the registry service,
PostgreSQL, Kafka, S3 and Jaeger.

The deployer runs in-process on topics of its own (a prefix per module), with its `Deployer` API on
a free port. The monitor is a peer whose service is built beside this one: here a small gRPC server
implements its `Monitor.GetHealth` contract and answers as each test tells it (healthy, erroring,
slow, too few requests, not at all). Model versions are registered in the real registry with real
ONNX files in S3. A test module takes the harness by importing the `harness` fixture.
"""

from __future__ import annotations

import asyncio
import collections
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import onnx
import pandas as pd
import pytest
from aiokafka import AIOKafkaConsumer
from grpc_health.v1 import health_pb2, health_pb2_grpc
from onnx import TensorProto, helper

from mlops.bus import EventConsumer, EventPublisher, Inbox, OutboxRelay, ensure_topics, partitions_of
from mlops.db import migrate
from mlops.deployer.v1 import deployer_pb2 as dpb
from mlops.deployer.v1 import deployer_pb2_grpc
from mlops.events.v1 import common_pb2, deployment_pb2, evaluation_pb2
from mlops.grpc import GrpcServer, open_channel
from mlops.monitor.v1 import monitor_pb2, monitor_pb2_grpc
from mlops.outbox import Outbox
from mlops.registry.v1 import registry_pb2 as pb
from mlops.registry.v1 import registry_pb2_grpc
from mlops.settings import BusSettings, GrpcServerSettings
from mlops.store import open_store
from services.deployer.__main__ import MIGRATIONS, published_topics
from services.deployer.clients import MonitorClient, RegistryClient
from services.deployer.core import DeployerCore
from services.deployer.handlers import DeployerHandlers
from services.deployer.servicer import DeployerServicer
from services.deployer.settings import DeployerSettings
from services.deployer.tables import SCHEMA
from tests.integration.bus_helpers import running
from tests.integration.conftest import eventually, service_identity

ROOT = Path(__file__).resolve().parents[2]
S = deployment_pb2
STEP_SECONDS = 1


# --- the monitor, as the tests want it to answer ----------------------------------------------------


class FakeMonitor(monitor_pb2_grpc.MonitorServicer):
    """`Monitor.GetHealth` as its proto describes it, answering per (model, version) as told."""

    def __init__(self) -> None:
        self.modes: dict[tuple[str, int], str] = {}
        self.calls: collections.deque[monitor_pb2.GetHealthRequest] = collections.deque(maxlen=10_000)

    async def GetHealth(self, request, context):
        self.calls.append(request)
        mode = self.modes.get((request.model, request.version), "healthy")
        if mode == "silent":
            await asyncio.sleep(10)
        if mode == "unavailable":
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the monitor is restarting")
        if mode == "unknown":
            await context.abort(
                grpc.StatusCode.NOT_FOUND, f"no requests of {request.model} v{request.version}"
            )
        count = 3 if mode == "few" else 200
        errors = 40 if mode == "erroring" else 0
        snapshot = common_pb2.HealthSnapshot(
            version=request.version,
            request_count=count,
            error_count=errors,
            error_rate=errors / count,
            latency_p50_ms=2.0,
            latency_p99_ms=180.0 if mode == "slow" else 6.5,
        )
        reply = monitor_pb2.GetHealthResponse(
            health=snapshot, baseline_version=request.baseline_version, sample_count=count
        )
        if mode == "drifting":
            reply.prediction_drift = 0.9
        elif request.baseline_version:
            reply.prediction_drift = 0.01
        return reply


# --- the deployer wired as its composition root wires it ---------------------------------------------


@dataclass
class Harness:
    registry: registry_pb2_grpc.RegistryStub
    deployer: deployer_pb2_grpc.DeployerStub
    deployer_addr: str
    monitor: FakeMonitor
    store: object
    publisher: EventPublisher
    bus: BusSettings
    kafka: object
    core: DeployerCore
    make_core: object
    watch: dict = field(default_factory=dict)

    def topic(self, event) -> str:
        from mlops.event_catalog import spec_for

        return self.bus.topic_prefix + spec_for(event).topic

    def start_watch(self, core: DeployerCore | None = None) -> None:
        self.core = core or self.core
        stopping = asyncio.Event()
        self.watch = {"stop": stopping, "task": asyncio.create_task(self.core.watch(stopping))}

    async def stop_watch(self) -> None:
        self.watch["stop"].set()
        await self.watch["task"]


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
async def harness(database, kafka, artifact_settings, telemetry):
    bus = BusSettings(
        retry_backoff_ms=20,
        retry_backoff_max_ms=100,
        max_attempts=3,
        outbox_poll_interval_ms=200,
        topic_prefix=f"tests.deployer-{uuid.uuid4().hex[:8]}.",
    )
    monitor_port = _free_port()
    settings = DeployerSettings(
        metrics_port=None,
        monitor_addr=f"127.0.0.1:{monitor_port}",
        monitor_timeout_s=0.5,
        tick_interval_s=0.25,
    )
    registry_channel = open_channel(settings.registry_addr)  # the test's own calls: the operator's
    # the core calls the registry as the deployer service does, with its own certificate
    deployer_identity = open_channel(settings.registry_addr, security=service_identity("deployer"))
    try:
        reply = await health_pb2_grpc.HealthStub(registry_channel).Check(
            health_pb2.HealthCheckRequest(), timeout=5
        )
    except grpc.aio.AioRpcError as error:
        pytest.fail(
            f"the registry is not answering at {settings.registry_addr} ({error.code().name}); run `make up` first",
            pytrace=False,
        )
    assert reply.status == health_pb2.HealthCheckResponse.SERVING

    monitor = FakeMonitor()
    # secured as the real monitor is: the deployer's client speaks mutual TLS to it
    monitor_server = GrpcServer(GrpcServerSettings(port=monitor_port))
    monitor_server.add(
        lambda server: monitor_pb2_grpc.add_MonitorServicer_to_server(monitor, server),
        "mlops.monitor.v1.Monitor",
    )
    await monitor_server.start()
    await monitor_server.set_serving()

    await migrate(database, MIGRATIONS, SCHEMA)
    await ensure_topics(kafka, bus, published_topics(bus.topic_prefix))
    publisher = EventPublisher(kafka, bus, source="mlops-deployer-tests")
    await publisher.start()
    outbox = Outbox(SCHEMA, source="mlops-deployer-tests", topic_prefix=bus.topic_prefix)
    monitor_channel = open_channel(settings.monitor_addr)

    def make_core() -> DeployerCore:
        return DeployerCore(
            database,
            RegistryClient(deployer_identity),
            MonitorClient(monitor_channel, timeout_s=settings.monitor_timeout_s),
            outbox,
            settings,
            scope=bus.topic_prefix,
        )

    core = make_core()
    server = GrpcServer(GrpcServerSettings(port=0))
    server.add(DeployerServicer(core).register, "mlops.deployer.v1.Deployer")
    port = await server.start()
    await server.set_serving()
    deployer_channel = open_channel(f"127.0.0.1:{port}")
    consumer = EventConsumer(
        kafka,
        bus,
        group_id=f"tests-deployer-{uuid.uuid4().hex[:8]}",
        publisher=publisher,
        database=database,
        inbox=Inbox(SCHEMA),
        from_end=True,
    )
    consumer.subscribe(evaluation_pb2.ModelEvaluated, DeployerHandlers(core).on_model_evaluated)
    relay = OutboxRelay(database, SCHEMA, publisher, bus)
    relay_task = asyncio.create_task(relay.run())
    h = Harness(
        registry=registry_pb2_grpc.RegistryStub(registry_channel),
        deployer=deployer_pb2_grpc.DeployerStub(deployer_channel),
        deployer_addr=f"127.0.0.1:{port}",
        monitor=monitor,
        store=open_store(artifact_settings),
        publisher=publisher,
        bus=bus,
        kafka=kafka,
        core=core,
        make_core=make_core,
    )
    h.start_watch()
    async with running(consumer):
        yield h
    await h.stop_watch()
    await relay.stop()
    await relay_task
    await server.stop()
    await monitor_server.stop()
    await publisher.stop()
    for channel in (registry_channel, deployer_identity, monitor_channel, deployer_channel):
        await channel.close()


# --- models in the registry --------------------------------------------------------------------------


def tiny_classifier(seed: int) -> bytes:
    """A real ONNX model by the platform's contract: input [-1, 3] → probabilities [-1, 2], label [-1]."""
    weights = helper.make_tensor("w", TensorProto.FLOAT, [3, 2], [0.1 * seed, -0.2, 0.3, 0.4, -0.5, 0.6])
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["input", "w"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
            helper.make_node("ArgMax", ["logits"], ["label"], axis=1, keepdims=0),
        ],
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, 3])],
        [
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, 2]),
            helper.make_tensor_value_info("label", TensorProto.INT64, [None]),
        ],
        initializer=[weights],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model.SerializeToString()


FEATURES = ["a", "b", "c"]


async def new_model(
    h: Harness,
    unique: str,
    *,
    strategy: str = "canary",
    steps=(10, 50, 100),
    step_seconds: int = STEP_SECONDS,
    versions: int = 2,
    auto_promote: bool = True,
    production: int = 0,
    health_timeout_seconds: int = 0,
    on_health_timeout: str = "",
) -> tuple[str, list[pb.ModelVersion]]:
    """A model with a spec and `versions` registered versions; `production` puts that version behind
    the registry's production alias (a baseline the deployer has not published itself)."""
    model = f"dep-{unique}-{uuid.uuid4().hex[:4]}"
    frame = pd.DataFrame(
        {"a": [1.0, 2.0, 3.0, 4.0], "b": [0.5, 0.1, 0.2, 0.3], "c": [1, 0, 1, 0], "target": [0, 1, 0, 1]}
    )
    data = frame.to_csv(index=False).encode()
    ref = await h.store.put_bytes(f"datasets/{model}", "data.csv", data)
    dataset = await h.registry.RecordDatasetVersion(
        pb.RecordDatasetVersionRequest(
            dataset=model, uri=ref.uri, sha256=ref.sha256, format="csv", committed_by="tests"
        )
    )
    body = pb.ModelSpecBody(dataset=model, task="classification", label="target")
    body.rollout.strategy = strategy
    body.rollout.steps.extend(steps if strategy == "canary" else [])
    body.rollout.step_seconds = step_seconds
    body.rollout.max_error_rate = 0.05
    body.rollout.max_p99_latency_ms = 50
    body.rollout.min_requests = 20
    body.rollout.auto_promote = auto_promote
    body.rollout.max_prediction_drift = 0.25
    if health_timeout_seconds:
        body.rollout.health_timeout_seconds = health_timeout_seconds
    body.rollout.on_health_timeout = on_health_timeout
    body.monitor.method = "psi"
    body.monitor.threshold = 0.25
    body.serving.max_batch_size = 32
    body.serving.max_wait_us = 800
    spec = pb.ModelSpec(
        api_version="mlops/v1", kind="ModelSpec", metadata=pb.ObjectMeta(name=model), spec=body
    )
    # versions are registered here by hand: the stack's trainer must not train this model too
    spec.spec.training.external = True
    applied = await h.registry.ApplyModelSpec(pb.ApplyModelSpecRequest(spec=spec, applied_by="tests"))
    registered = []
    for seed in range(1, versions + 1):
        onnx_ref = await h.store.put_bytes(f"models/{model}", "model.onnx", tiny_classifier(seed))
        signature = pb.ModelSignature(
            inputs=[pb.TensorSpec(name="input", datatype="FP32", shape=[-1, 3])],
            outputs=[
                pb.TensorSpec(name="probabilities", datatype="FP32", shape=[-1, 2]),
                pb.TensorSpec(name="label", datatype="INT64", shape=[-1]),
            ],
            feature_names=FEATURES,
            class_labels=["0", "1"],
            task="classification",
            onnx_opset=17,
        )
        reply = await h.registry.RegisterModelVersion(
            pb.RegisterModelVersionRequest(
                model=model,
                run_id=uuid.uuid4().hex,
                spec_version=applied.spec_version,
                dataset=model,
                dataset_version=dataset.dataset_version.version,
                dataset_sha256=dataset.dataset_version.sha256,
                artifact_uri=onnx_ref.uri,
                artifact_sha256=onnx_ref.sha256,
                artifact_size_bytes=onnx_ref.size,
                signature=signature,
            )
        )
        registered.append(reply.model_version)
    if production:
        await h.registry.SetAlias(
            pb.SetAliasRequest(
                model=model, alias="production", version=production, actor="tests", reason="baseline"
            )
        )
    return model, registered


def evaluated(version: pb.ModelVersion, *, passed: bool = True) -> evaluation_pb2.ModelEvaluated:
    event = evaluation_pb2.ModelEvaluated(
        model=version.model,
        version=version.version,
        passed=passed,
        evaluation_id=str(uuid.uuid4()),
        primary_metric="accuracy",
        metrics={"accuracy": 0.93 if passed else 0.41},
        artifact_uri=version.artifact_uri,
        artifact_sha256=version.artifact_sha256,
        gates=[
            evaluation_pb2.GateResult(
                gate="min", passed=passed, observed=0.93 if passed else 0.41, threshold=0.85
            )
        ],
    )
    event.evaluated_at.GetCurrentTime()
    return event


async def recorded(h: Harness, event: evaluation_pb2.ModelEvaluated) -> evaluation_pb2.ModelEvaluated:
    """`event`, once the registry holds its evaluation: the deployer believes only what the registry
    confirms, as the evaluator records each verdict before it publishes it."""
    await h.registry.RecordEvaluation(
        pb.RecordEvaluationRequest(
            evaluation=pb.Evaluation(
                evaluation_id=event.evaluation_id,
                model=event.model,
                version=event.version,
                passed=event.passed,
                metrics=event.metrics,
                gates=event.gates,
                primary_metric=event.primary_metric,
                evaluated_at=event.evaluated_at,
            )
        )
    )
    return event


async def claimed(
    h: Harness, version: pb.ModelVersion, *, passed: bool = True
) -> evaluation_pb2.ModelEvaluated:
    """A `ModelEvaluated` of `version` whose evaluation the registry holds."""
    return await recorded(h, evaluated(version, passed=passed))


# --- reading what the deployer published ----------------------------------------------------------------


async def published(
    h: Harness, event_type, model: str, *, until=None, timeout_s: float = 30.0, settle_s: float = 0
):
    """Every `event_type` record about `model` on its topic, from the start, once `until(records)`."""
    topic = h.topic(event_type)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    found: list = []
    reader = AIOKafkaConsumer(**h.kafka.client_options(), group_id=None, enable_auto_commit=False)
    await reader.start()
    try:
        partitions = await partitions_of(h.kafka, topic)
        reader.assign(partitions)
        await reader.seek_to_beginning(*partitions)
        while True:
            batch = await reader.getmany(timeout_ms=200)
            for records in batch.values():
                for record in records:
                    if record.key == model.encode() and record.value is not None:
                        found.append(event_type.FromString(record.value))
            if until is None and not batch and settle_s <= 0:
                return found
            if until is not None and until(found):
                if settle_s <= 0:
                    return found
                settle_until = loop.time() + settle_s
                while loop.time() < settle_until:
                    for records in (await reader.getmany(timeout_ms=200)).values():
                        found.extend(
                            event_type.FromString(r.value)
                            for r in records
                            if r.key == model.encode() and r.value
                        )
                return found
            if loop.time() > deadline:
                raise AssertionError(
                    f"{event_type.__name__} of {model}: condition not met in {timeout_s}s; got {found}"
                )
    finally:
        await reader.stop()


def shares(desired: S.DesiredState) -> list[tuple[int, str, int]]:
    return [
        (v.version, common_pb2.ServingRole.Name(v.role).removeprefix("SERVING_ROLE_"), v.traffic_percent)
        for v in desired.versions
    ]


async def rollout_of(h: Harness, model: str) -> dpb.Rollout:
    return await h.deployer.GetRollout(dpb.GetRolloutRequest(model=model))


async def finished(h: Harness, model: str, version: int = 0, timeout_s: float = 30.0) -> dpb.Rollout:
    """The model's rollout (of `version`, when given) once it has ended."""

    async def done():
        rollout = await rollout_of(h, model)
        wanted = not version or rollout.candidate_version == version
        return rollout if wanted and rollout.HasField("finished_at") else None

    return await eventually(
        done, timeout_s=timeout_s, interval_s=0.2, what=f"the rollout of {model} finished"
    )


async def deploy_first(h: Harness, model: str, version: pb.ModelVersion) -> dpb.Rollout:
    await h.publisher.publish(await claimed(h, version))
    rollout = await finished(h, model, version.version)
    assert rollout.state == S.ROLLOUT_STATE_PROMOTED
    return rollout
