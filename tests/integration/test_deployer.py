"""The deployer against the real stack: the registry service, PostgreSQL, Kafka, S3 and Jaeger.

The deployer runs in-process on topics of its own (a prefix per module), with its `Deployer` API on
a free port. The monitor is a peer whose service is built beside this one: here a small gRPC server
implements its `Monitor.GetHealth` contract and answers as each test tells it (healthy, erroring,
slow, too few requests, not at all). Model versions are registered in the real registry with real
ONNX files in S3.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import os
import re
import sys
import uuid
from dataclasses import dataclass, field
from datetime import UTC
from pathlib import Path

import grpc
import onnx
import pandas as pd
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from grpc_health.v1 import health_pb2, health_pb2_grpc
from onnx import TensorProto, helper
from opentelemetry import trace
from prometheus_client import REGISTRY
from sqlalchemy import text

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
from tests.integration.conftest import eventually, jaeger_trace, service_identity

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


# --- the tests --------------------------------------------------------------------------------------------


async def test_a_passed_version_goes_canary_10_50_100_to_production(harness, unique, jaeger_url, telemetry):
    h = harness
    model, (v1, v2) = await new_model(h, unique)

    first = await deploy_first(h, model, v1)
    assert first.strategy == "direct" and first.baseline_version == 0
    assert "first version" in first.reason and "no baseline to split traffic with" in first.reason

    tracer = trace.get_tracer("tests")
    with tracer.start_as_current_span("upstream data commit") as root:
        trace_id = format(root.get_span_context().trace_id, "032x")
        await h.publisher.publish(await claimed(h, v2))
    rollout = await finished(h, model, 2)

    assert rollout.state == S.ROLLOUT_STATE_PROMOTED, rollout.reason
    assert (rollout.strategy, list(rollout.steps), rollout.baseline_version) == ("canary", [10, 50, 100], 1)
    assert rollout.reason.startswith("canary healthy at 10%, 50%, 100%")
    assert [m.traffic_percent for m in rollout.history] == [10, 50, 100, 100]
    assert [m.state for m in rollout.history] == [S.ROLLOUT_STATE_PROGRESSING] * 3 + [
        S.ROLLOUT_STATE_PROMOTED
    ]
    steps_at = [m.progressed_at.ToDatetime() for m in rollout.history]
    assert all((b - a).total_seconds() >= STEP_SECONDS for a, b in itertools.pairwise(steps_at))
    assert rollout.candidate_health.request_count == 200 and rollout.baseline_health.version == 1
    assert rollout.max_prediction_drift == pytest.approx(0.25), (
        "the spec's rollout.max_prediction_drift bounds prediction drift"
    )

    desired = await published(h, S.DesiredState, model, until=lambda f: len(f) >= 5)
    assert [d.generation for d in desired] == [1, 2, 3, 4, 5]
    assert [shares(d) for d in desired] == [
        [(1, "PRODUCTION", 100)],
        [(1, "PRODUCTION", 90), (2, "CANARY", 10)],
        [(1, "PRODUCTION", 50), (2, "CANARY", 50)],
        [(1, "PRODUCTION", 0), (2, "CANARY", 100)],
        [(2, "PRODUCTION", 100)],
    ]
    last = desired[-1]
    assert last.rollout_id == rollout.rollout_id
    assert (last.batching.max_batch_size, last.batching.max_wait_us) == (32, 800)
    served = last.versions[0]
    assert (served.artifact_uri, served.artifact_sha256) == (v2.artifact_uri, v2.artifact_sha256)
    assert list(served.feature_names) == FEATURES and list(served.class_labels) == ["0", "1"]
    assert served.task == "classification"
    assert (await h.deployer.GetDesiredState(dpb.GetDesiredStateRequest(model=model))) == last

    progressed = await published(
        h,
        S.RolloutProgressed,
        model,
        until=lambda f: any(p.state == S.ROLLOUT_STATE_PROMOTED and p.candidate_version == 2 for p in f),
    )
    ours = [p for p in progressed if p.rollout_id == rollout.rollout_id]
    assert [(p.step_index, p.traffic_percent, p.generation) for p in ours] == [
        (0, 10, 2),
        (1, 50, 3),
        (2, 100, 4),
        (2, 100, 5),
    ]
    deployed = await published(h, S.ModelDeployed, model, until=lambda f: len(f) >= 2)
    assert [(d.version, d.previous_version, d.strategy) for d in deployed] == [
        (1, 0, "direct"),
        (2, 1, "canary"),
    ]
    assert deployed[1].generation == 5 and deployed[1].actor == "mlops-deployer"
    assert deployed[1].artifact_sha256 == v2.artifact_sha256

    aliases = await h.registry.ListAliases(pb.ListAliasesRequest(model=model))
    assert {(a.alias, a.version) for a in aliases.aliases} == {("production", 2)}, (
        "canary alias removed at the end"
    )
    ledger = await h.registry.GetAliasHistory(pb.GetAliasHistoryRequest(model=model))
    moves = [(c.alias, c.from_version, c.to_version, c.actor) for c in reversed(ledger.changes)]
    assert moves == [
        ("production", 0, 1, "mlops-deployer via svc:deployer"),
        ("canary", 0, 2, "mlops-deployer via svc:deployer"),
        ("production", 1, 2, "mlops-deployer via svc:deployer"),
        ("canary", 2, 0, "mlops-deployer via svc:deployer"),
    ]

    async def recorded():
        listed = await h.registry.ListDeployments(pb.ListDeploymentsRequest(model=model, version=2))
        return (
            listed.deployments
            if listed.deployments and listed.deployments[0].state == S.ROLLOUT_STATE_PROMOTED
            else None
        )

    records = await eventually(recorded, timeout_s=10, what="the registry's deployment record")
    assert records[0].rollout_id == rollout.rollout_id and records[0].generation == 5

    metric = REGISTRY.get_sample_value
    assert metric("mlops_rollout_state", {"model": model, "state": "PROMOTED"}) == 1
    assert metric("mlops_rollout_state", {"model": model, "state": "PROGRESSING"}) == 0
    assert metric("mlops_rollout_traffic_percent", {"model": model, "version": "2"}) == 100
    assert metric("mlops_rollout_step", {"model": model}) == 2
    assert metric("mlops_rollouts_finished_total", {"model": model, "outcome": "promoted"}) == 2

    calls = [c for c in h.monitor.calls if c.model == model and c.version == 2]
    assert calls and all(c.window_seconds == STEP_SECONDS and c.baseline_version == 1 for c in calls)

    telemetry.provider.force_flush()

    def rollout_spans():
        spans = jaeger_trace(jaeger_url, trace_id)
        names = {s.name for s in spans}
        wanted = {
            f"process {h.topic(evaluation_pb2.ModelEvaluated)}",
            "start rollout",
            "check rollout",
            "/mlops.monitor.v1.Monitor/GetHealth",
            "/mlops.registry.v1.Registry/SetAlias",
            "/mlops.registry.v1.Registry/RecordDeployment",
            f"publish {h.topic(S.DesiredState)}",
            f"publish {h.topic(S.ModelDeployed)}",
        }
        return spans if wanted <= names else None

    spans = await eventually(
        rollout_spans, timeout_s=30, what="the rollout's spans in the data commit's trace"
    )
    checks = [s for s in spans if s.name == "check rollout"]
    assert all(s.attributes["mlops.model.name"] == model for s in checks)
    assert all(int(s.attributes["mlops.model.version"]) == 2 for s in checks)


@pytest.mark.parametrize(
    ("mode", "bound", "words"),
    [
        ("erroring", "max_error_rate", "error rate 0.2 > max_error_rate 0.05"),
        ("slow", "max_p99_latency_ms", "p99 latency 180 ms > max_p99_latency_ms 50 ms"),
    ],
)
async def test_an_unhealthy_candidate_is_rolled_back_automatically(harness, unique, mode, bound, words):
    h = harness
    model, (v1, v2) = await new_model(h, unique, step_seconds=30)
    await deploy_first(h, model, v1)
    h.monitor.modes[(model, 2)] = mode
    await h.publisher.publish(await claimed(h, v2))
    rollout = await finished(h, model, 2)

    assert rollout.state == S.ROLLOUT_STATE_ROLLED_BACK
    assert rollout.reason == f"{words} at step 1 of 3 (10%)", (
        "broken mid-step: long before the 30 s step ends"
    )
    (event,) = await published(h, S.ModelRolledBack, model, until=lambda f: len(f) >= 1)
    assert (event.from_version, event.to_version, event.automatic, event.actor) == (
        2,
        1,
        True,
        "mlops-deployer",
    )
    assert event.reason == rollout.reason and words in event.reason
    assert event.candidate_health.request_count == 200 and event.baseline_health.version == 1
    desired = await published(h, S.DesiredState, model, until=lambda f: len(f) >= 3)
    assert shares(desired[-1]) == [(1, "PRODUCTION", 100)] and desired[-1].generation == 3
    production = await h.registry.GetModelVersion(pb.GetModelVersionRequest(model=model, alias="production"))
    assert production.version == 1
    aliases = await h.registry.ListAliases(pb.ListAliasesRequest(model=model))
    assert {a.alias for a in aliases.aliases} == {"production"}
    assert REGISTRY.get_sample_value("mlops_rollbacks_total", {"model": model, "automatic": "true"}) == 1
    assert REGISTRY.get_sample_value("mlops_rollout_traffic_percent", {"model": model, "version": "2"}) == 0


@pytest.mark.parametrize(
    ("mode", "words"),
    [
        ("silent", "the monitor did not answer (DeadlineExceeded"),
        ("few", "only 3 requests answered, fewer than min_requests 20"),
    ],
)
async def test_no_answer_or_too_few_requests_hold_and_never_promote(harness, unique, mode, words):
    h = harness
    model, (_v1, v2) = await new_model(h, unique, steps=(100,), production=1)
    h.monitor.modes[(model, 2)] = mode
    await h.publisher.publish(await claimed(h, v2))

    async def holding():
        rollout = await rollout_of(h, model)
        return rollout if words in rollout.reason else None

    rollout = await eventually(holding, timeout_s=20, what="the hold")
    assert rollout.state == S.ROLLOUT_STATE_PROGRESSING and rollout.reason.startswith(
        "holding at step 1 of 1 (100%)"
    )
    await asyncio.sleep(3 * STEP_SECONDS)  # well past the step: still held, never promoted
    rollout = await rollout_of(h, model)
    assert rollout.state == S.ROLLOUT_STATE_PROGRESSING and not rollout.HasField("finished_at")
    holds = [m for m in rollout.history if words in m.reason]
    assert len(holds) == 1, "a hold is announced once, not every tick"
    production = await h.registry.GetModelVersion(pb.GetModelVersionRequest(model=model, alias="production"))
    assert production.version == 1

    h.monitor.modes[(model, 2)] = "healthy"  # the monitor answers again: the step is judged and passes
    rollout = await finished(h, model)
    assert rollout.state == S.ROLLOUT_STATE_PROMOTED


async def test_a_failed_gate_deploys_nothing(harness, unique):
    h = harness
    model, (v1,) = await new_model(h, unique, versions=1)
    event_id = str(uuid.uuid4())
    await h.publisher.publish(await claimed(h, v1, passed=False), event_id=event_id)

    async def handled():
        async with h.core.database.session() as session:
            count = await session.exec(
                text(f'SELECT count(*) FROM "{SCHEMA}".inbox WHERE event_id = :e'), params={"e": event_id}
            )
            return count.scalar_one() == 1

    await eventually(handled, what="the failed evaluation handled")
    await asyncio.sleep(1)  # and a few ticks of the watch
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await rollout_of(h, model)
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND and "has no rollouts" in raised.value.details()
    assert await published(h, S.DesiredState, model) == []
    aliases = await h.registry.ListAliases(pb.ListAliasesRequest(model=model))
    assert not aliases.aliases


async def test_a_newer_candidate_supersedes_the_running_rollout(harness, unique):
    h = harness
    model, (_v1, v2, v3) = await new_model(h, unique, versions=3, step_seconds=30, production=1)
    await h.publisher.publish(await claimed(h, v2))
    await eventually(lambda: rollout_of(h, model), what="v2's rollout")
    await h.publisher.publish(await claimed(h, v3))

    async def v3_running():
        rollout = await rollout_of(h, model)
        return rollout if rollout.candidate_version == 3 else None

    newer = await eventually(v3_running, what="v3's rollout")
    assert newer.baseline_version == 1 and newer.state == S.ROLLOUT_STATE_PROGRESSING
    listed = await h.deployer.ListRollouts(dpb.ListRolloutsRequest(model=model))
    assert [r.candidate_version for r in listed.rollouts] == [3, 2]
    older = listed.rollouts[1]
    assert older.state == S.ROLLOUT_STATE_ABORTED
    assert older.reason == f"superseded by v3 (rollout {newer.rollout_id})"
    desired = await published(h, S.DesiredState, model, until=lambda f: len(f) >= 2)
    assert shares(desired[-1]) == [(1, "PRODUCTION", 90), (3, "CANARY", 10)]
    canary = await h.registry.GetModelVersion(pb.GetModelVersionRequest(model=model, alias="canary"))
    assert canary.version == 3

    async def recorded():
        listed = await h.registry.ListDeployments(pb.ListDeploymentsRequest(model=model))
        return {(d.version, d.state) for d in listed.deployments} == {
            (2, S.ROLLOUT_STATE_ABORTED),
            (3, S.ROLLOUT_STATE_PROGRESSING),
        }

    await eventually(recorded, timeout_s=10, what="both rollouts recorded in the registry")
    # an older passed candidate arriving late changes nothing
    await h.publisher.publish(await claimed(h, v2))
    await asyncio.sleep(1.5)
    assert (await rollout_of(h, model)).rollout_id == newer.rollout_id


async def test_pause_resume_promote_and_rollback_through_grpc(harness, unique):
    h = harness
    model, (_v1, v2, v3) = await new_model(h, unique, versions=3, production=1)
    await h.publisher.publish(await claimed(h, v2))
    await eventually(lambda: rollout_of(h, model), what="v2's rollout")
    # the actor a caller types is not believed: the ledger names the authenticated caller (the operator)
    act = dpb.RolloutActionRequest(model=model, actor="alice", reason="checking dashboards")

    paused = await h.deployer.Pause(act)
    assert paused.state == S.ROLLOUT_STATE_PAUSED and paused.reason.startswith(
        "paused by user:admin: checking dashboards"
    )
    await asyncio.sleep(3 * STEP_SECONDS)
    still = await rollout_of(h, model)
    assert (still.state, still.step_index) == (S.ROLLOUT_STATE_PAUSED, paused.step_index), (
        "paused: no step taken"
    )
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await h.deployer.Pause(act)
    assert (
        raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        and "already paused" in raised.value.details()
    )

    resumed = await h.deployer.Resume(act)
    assert resumed.state == S.ROLLOUT_STATE_PROGRESSING and resumed.history[-1].actor == "user:admin"
    promoted = await h.deployer.Promote(
        dpb.RolloutActionRequest(model=model, actor="alice", reason="looks good")
    )
    assert promoted.state == S.ROLLOUT_STATE_PROMOTED and promoted.reason.startswith(
        "promoted by user:admin: looks good"
    )
    deployed = await published(h, S.ModelDeployed, model, until=lambda f: len(f) >= 1)
    assert (deployed[-1].version, deployed[-1].actor) == (2, "user:admin")

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await h.deployer.Resume(act)
    assert (
        raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        and "no running rollout" in raised.value.details()
    )

    # v3 rolls out; an operator withdraws it
    await h.publisher.publish(await claimed(h, v3))

    async def v3_running():
        rollout = await rollout_of(h, model)
        return rollout if rollout.candidate_version == 3 else None

    await eventually(v3_running, what="v3's rollout")
    withdrawn = await h.deployer.Rollback(
        dpb.RolloutActionRequest(model=model, actor="bob", reason="customer complaints")
    )
    assert withdrawn.state == S.ROLLOUT_STATE_ROLLED_BACK and withdrawn.baseline_version == 2
    rolled = await published(h, S.ModelRolledBack, model, until=lambda f: len(f) >= 1)
    assert (rolled[-1].from_version, rolled[-1].to_version, rolled[-1].automatic, rolled[-1].actor) == (
        3,
        2,
        False,
        "user:admin",
    )

    # with nothing running, a rollback returns production to the version before: v2 → v1
    back = await h.deployer.Rollback(
        dpb.RolloutActionRequest(model=model, actor="bob", reason="v2 misbehaves")
    )
    assert (back.candidate_version, back.baseline_version, back.state) == (2, 1, S.ROLLOUT_STATE_ROLLED_BACK)
    production = await h.registry.GetModelVersion(pb.GetModelVersionRequest(model=model, alias="production"))
    assert production.version == 1
    desired = await h.deployer.GetDesiredState(dpb.GetDesiredStateRequest(model=model))
    assert shares(desired) == [(1, "PRODUCTION", 100)]


async def test_a_paused_rollout_is_still_watched_and_rolled_back(harness, unique):
    h = harness
    model, (_v1, v2) = await new_model(h, unique, production=1)
    await h.publisher.publish(await claimed(h, v2))
    await eventually(lambda: rollout_of(h, model), what="v2's rollout")
    await h.deployer.Pause(dpb.RolloutActionRequest(model=model, actor="erin"))
    h.monitor.modes[(model, 2)] = "drifting"
    rollout = await finished(h, model, 2)
    assert rollout.state == S.ROLLOUT_STATE_ROLLED_BACK
    assert rollout.reason.startswith("prediction drift (PSI against the baseline) 0.9 > 0.25 at step")
    assert rollout.prediction_drift == pytest.approx(0.9)
    (event,) = await published(h, S.ModelRolledBack, model, until=lambda f: len(f) >= 1)
    assert event.automatic and event.to_version == 1


async def test_a_restarted_deployer_goes_on_with_the_same_step_clock(harness, unique):
    h = harness
    step = 4
    model, (_v1, v2) = await new_model(h, unique, steps=(20, 100), step_seconds=step, production=1)
    await h.publisher.publish(await claimed(h, v2))
    first = await eventually(lambda: rollout_of(h, model), what="v2's rollout")
    started = first.step_started_at.ToDatetime(tzinfo=UTC)
    await asyncio.sleep(1.5)
    await h.stop_watch()  # the deployer goes away mid-step ...
    await asyncio.sleep(1.5)
    h.start_watch(h.make_core())  # ... and a new one takes over from the database

    async def second_step():
        rollout = await rollout_of(h, model)
        return rollout if rollout.step_index == 1 else None

    moved = await eventually(second_step, timeout_s=20, what="the second step")
    assert [m.step_index for m in moved.history] == [0, 1], "the restarted deployer did not restart step 1"
    advanced = moved.history[1].progressed_at.ToDatetime(tzinfo=UTC)
    elapsed = (advanced - started).total_seconds()
    assert step <= elapsed < step + 2.5, f"the step ran {elapsed:.1f}s: its clock restarted with the deployer"
    assert (await finished(h, model)).state == S.ROLLOUT_STATE_PROMOTED


UNREACHABLE = r"monitor unreachable \((UNAVAILABLE|DEADLINE_EXCEEDED)\)"
"""A monitor answering UNAVAILABLE: the channel retries it with back-off, so under the harness's
0.5 s deadline the call ends with either status, and the reason names the one the deployer got."""


@pytest.mark.parametrize(
    ("mode", "cause"),
    [("unavailable", UNREACHABLE), ("few", r"only 3 of 20 requests")],
)
async def test_a_canary_without_a_health_verdict_is_rolled_back_after_its_health_timeout(
    harness, unique, mode, cause
):
    h = harness
    timeout = 2
    model, (_v1, v2) = await new_model(
        h, unique, steps=(50, 100), production=1, health_timeout_seconds=timeout
    )
    h.monitor.modes[(model, 2)] = mode
    await h.publisher.publish(await claimed(h, v2))
    rollout = await finished(h, model, 2)

    words = rollout.reason
    assert rollout.state == S.ROLLOUT_STATE_ROLLED_BACK, rollout
    assert re.fullmatch(
        rf"no health verdict for {timeout} s after step 1 of 2 \(50%\): {cause}; rolled back", words
    ), words
    assert any(m.reason.startswith("holding at step 1 of 2 (50%)") for m in rollout.history), (
        "the hold came first"
    )
    waited = (rollout.finished_at.ToDatetime() - rollout.step_started_at.ToDatetime()).total_seconds()
    assert STEP_SECONDS + timeout <= waited < STEP_SECONDS + timeout + 3, waited
    (event,) = await published(h, S.ModelRolledBack, model, until=lambda f: len(f) >= 1)
    assert (event.from_version, event.to_version, event.automatic, event.reason) == (2, 1, True, words)
    desired = await published(h, S.DesiredState, model, until=lambda f: len(f) >= 2)
    assert shares(desired[-1]) == [(1, "PRODUCTION", 100)]
    production = await h.registry.GetModelVersion(pb.GetModelVersionRequest(model=model, alias="production"))
    assert production.version == 1
    deployments = await h.registry.ListDeployments(pb.ListDeploymentsRequest(model=model))
    assert any(d.reason == words for d in deployments.deployments), "the registry's ledger says why"


async def test_a_silent_canary_is_paused_when_the_spec_says_so_and_a_resume_restarts_the_clock(
    harness, unique
):
    h = harness
    model, (_v1, v2) = await new_model(
        h, unique, steps=(50, 100), production=1, health_timeout_seconds=2, on_health_timeout="pause"
    )
    h.monitor.modes[(model, 2)] = "unavailable"
    await h.publisher.publish(await claimed(h, v2))

    async def paused():
        rollout = await rollout_of(h, model)
        return rollout if rollout.state == S.ROLLOUT_STATE_PAUSED else None

    rollout = await eventually(paused, timeout_s=20, what="the pause")
    assert re.fullmatch(
        rf"no health verdict for 2 s after step 1 of 2 \(50%\): {UNREACHABLE}; "
        r"paused: a person resumes or rolls back",
        rollout.reason,
    ), rollout.reason
    assert rollout.history[-1].actor == "mlops-deployer" and not rollout.HasField("finished_at")
    production = await h.registry.GetModelVersion(pb.GetModelVersionRequest(model=model, alias="production"))
    assert production.version == 1

    # A person resumes while the monitor is still away: the timeout counts afresh from the resume,
    # so the rollout pauses again, not at once.
    resumed = await h.deployer.Resume(dpb.RolloutActionRequest(model=model, actor="erin"))
    again = await eventually(paused, timeout_s=20, what="the second pause")
    waited = (again.updated_at.ToDatetime() - resumed.updated_at.ToDatetime()).total_seconds()
    assert waited >= 2, f"paused again {waited:.1f}s after the resume: the clock did not restart"
    await h.deployer.Resume(dpb.RolloutActionRequest(model=model, actor="erin"))
    h.monitor.modes[(model, 2)] = "healthy"
    assert (await finished(h, model)).state == S.ROLLOUT_STATE_PROMOTED


async def test_the_health_timeout_clock_survives_a_deployer_restart(harness, unique):
    h = harness
    timeout = 5
    model, (_v1, v2) = await new_model(
        h, unique, steps=(50, 100), production=1, health_timeout_seconds=timeout
    )
    h.monitor.modes[(model, 2)] = "unavailable"
    await h.publisher.publish(await claimed(h, v2))

    async def held():
        rollout = await rollout_of(h, model)
        return rollout if rollout.reason.startswith("holding") else None

    await eventually(held, timeout_s=20, what="the hold")
    await asyncio.sleep(2)  # part of the timeout passes ...
    await h.stop_watch()  # ... the deployer goes away ...
    await asyncio.sleep(1)
    h.start_watch(h.make_core())  # ... and a new one takes over from the database
    rollout = await finished(h, model, 2)
    assert rollout.state == S.ROLLOUT_STATE_ROLLED_BACK
    waited = (rollout.finished_at.ToDatetime() - rollout.step_started_at.ToDatetime()).total_seconds()
    assert waited < STEP_SECONDS + timeout + 2.5, f"rolled back {waited:.1f}s in: the clock restarted"


async def test_bad_requests_get_clear_statuses(harness, unique):
    h = harness
    model, (_v1, _v2) = await new_model(h, unique, production=1)

    async def status_of(call):
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await call
        return raised.value.code(), raised.value.details()

    code, details = await status_of(h.deployer.GetRollout(dpb.GetRolloutRequest()))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details == "give a model name or a rollout_id"
    code, details = await status_of(h.deployer.StartRollout(dpb.StartRolloutRequest(model=model, version=0)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "version must be a model version" in details
    code, details = await status_of(
        h.deployer.StartRollout(dpb.StartRolloutRequest(model=model, version=2, strategy="linear"))
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "'linear' is not one of canary, shadow" in details
    code, details = await status_of(h.deployer.StartRollout(dpb.StartRolloutRequest(model=model, version=99)))
    assert code == grpc.StatusCode.NOT_FOUND and "99" in details
    code, details = await status_of(
        h.deployer.GetRollout(dpb.GetRolloutRequest(rollout_id=str(uuid.uuid4())))
    )
    assert code == grpc.StatusCode.NOT_FOUND and "no rollout with id" in details
    code, details = await status_of(h.deployer.Promote(dpb.RolloutActionRequest(model=model)))
    assert code == grpc.StatusCode.NOT_FOUND and "has no rollouts" in details
    code, details = await status_of(h.deployer.GetDesiredState(dpb.GetDesiredStateRequest(model=model)))
    assert code == grpc.StatusCode.NOT_FOUND and "no desired state" in details
    code, details = await status_of(h.deployer.ListRollouts(dpb.ListRolloutsRequest(page_token="garbage")))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "page_token" in details

    started = await h.deployer.StartRollout(
        dpb.StartRolloutRequest(model=model, version=2, strategy="shadow", actor="carol", reason="try it")
    )
    assert (
        started.strategy == "shadow"
        and started.state == S.ROLLOUT_STATE_SHADOWING
        and started.actor == "user:admin"
    )
    code, details = await status_of(h.deployer.StartRollout(dpb.StartRolloutRequest(model=model, version=2)))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "already being rolled out" in details
    code, details = await status_of(h.deployer.Resume(dpb.RolloutActionRequest(model=model)))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "is not paused" in details
    desired = await published(h, S.DesiredState, model, until=lambda f: len(f) >= 1)
    assert shares(desired[0]) == [(1, "PRODUCTION", 100), (2, "SHADOW", 0)]
    done = await finished(h, model)
    assert done.state == S.ROLLOUT_STATE_PROMOTED and done.reason.startswith("shadow healthy")
    code, details = await status_of(h.deployer.StartRollout(dpb.StartRolloutRequest(model=model, version=2)))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and details == f"{model} v2 is already in production"


async def test_blue_green_switches_at_once_and_keeps_blue_for_one_step(harness, unique):
    h = harness
    model, (_v1, v2) = await new_model(h, unique, strategy="blue_green", production=1)
    h.monitor.modes[(model, 2)] = "unknown"  # green sees no traffic at first: the monitor has no figures
    await h.publisher.publish(await claimed(h, v2))
    await eventually(lambda: rollout_of(h, model), what="the rollout")

    async def switched():
        rollout = await rollout_of(h, model)
        return rollout if rollout.step_index == 1 else None

    await eventually(switched, timeout_s=15, what="all traffic on green")
    h.monitor.modes[(model, 2)] = "healthy"
    rollout = await finished(h, model)
    assert rollout.state == S.ROLLOUT_STATE_PROMOTED
    desired = await published(h, S.DesiredState, model, until=lambda f: len(f) >= 3)
    assert [shares(d) for d in desired] == [
        [(1, "PRODUCTION", 100), (2, "CANARY", 0)],
        [(1, "PRODUCTION", 0), (2, "CANARY", 100)],
        [(2, "PRODUCTION", 100)],
    ]


async def test_malformed_model_evaluated_events_go_to_the_dead_letters(harness, unique):
    h = harness
    dlq = h.topic(evaluation_pb2.ModelEvaluated) + ".dlq"
    key = f"broken-{unique}"
    producer = AIOKafkaProducer(**h.kafka.client_options())
    await producer.start()
    try:
        await producer.send_and_wait(
            h.topic(evaluation_pb2.ModelEvaluated),
            key=key.encode(),
            value=b"\xff\x00 not protobuf",
            headers=[("ce_type", b"mlops.model.evaluated.v1"), ("content-type", b"application/protobuf")],
        )
    finally:
        await producer.stop()
    # Refused at decode by the bus's event checks, before the deployer sees it ...
    await h.publisher.publish(evaluation_pb2.ModelEvaluated(model="", version=0, passed=True), key=key)
    # ... and refused by the deployer itself: a version 0 is well formed but names nothing to roll out.
    await h.publisher.publish(evaluation_pb2.ModelEvaluated(model=key, version=0, passed=True), key=key)

    reader = AIOKafkaConsumer(**h.kafka.client_options(), group_id=None, enable_auto_commit=False)
    await reader.start()
    reasons = []
    try:
        await ensure_topics(h.kafka, BusSettings(), [dlq])
        partitions = await partitions_of(h.kafka, dlq)
        reader.assign(partitions)
        await reader.seek_to_beginning(*partitions)

        async def both():
            for records in (await reader.getmany(timeout_ms=200)).values():
                for record in records:
                    if record.key == key.encode():
                        reasons.append(dict(record.headers)["mlops_dlq_reason"].decode())
            return len(reasons) >= 3

        await eventually(both, timeout_s=30, what="three dead letters")
    finally:
        await reader.stop()
    assert any("does not parse as ModelEvaluated" in r for r in reasons), reasons
    assert any("model: is required" in r for r in reasons), reasons
    assert any(
        "ModelEvaluated cannot be rolled out: version must be 1 or more, got 0" in r for r in reasons
    ), reasons


async def test_the_cli_steers_a_rollout(harness, unique):
    h = harness
    model, (_v1, _v2) = await new_model(h, unique, step_seconds=60, production=1)

    async def mlops(*args: str) -> tuple[int, str, str]:
        env = {k: v for k, v in os.environ.items() if k != "OTEL_SERVICE_NAME"}
        env |= {"MLOPS_DEPLOYER_ADDR": h.deployer_addr, "COLUMNS": "200"}
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "mlops.cli",
            *args,
            cwd=ROOT,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(process.communicate(), 120)
        return process.returncode, out.decode(), err.decode()

    code, out, err = await mlops("rollout", "start", model, "2", "--reason", "by hand", "--actor", "dave")
    assert code == 0, err
    assert "canary" in out and "PROGRESSING".lower() in out and "by hand" in out
    code, out, err = await mlops("rollout", "pause", model, "--actor", "dave")
    assert code == 0 and "paused" in out, err
    code, out, err = await mlops("--json", "rollout", "status", model)
    assert code == 0, err
    import json

    status = json.loads(out)
    assert status["state"] == "ROLLOUT_STATE_PAUSED" and status["candidateVersion"] == "2"
    code, out, err = await mlops("rollout", "resume", model, "--actor", "dave")
    assert code == 0 and "progressing" in out, err
    code, out, err = await mlops("rollout", "resume", model)
    assert code == 1 and "is not paused" in err
    code, out, err = await mlops("rollout", "promote", model, "--actor", "dave", "--reason", "ship it")
    assert code == 0 and "promoted" in out, err
    code, out, err = await mlops("rollout", "desired", model)
    assert code == 0 and "PRODUCTION".lower() in out.lower() and "100%" in out, err
    code, out, err = await mlops("rollout", "rollback", model, "--actor", "dave")
    assert code == 0 and "rolled_back" in out, err
    code, out, err = await mlops("rollout", "list", model)
    assert code == 0 and out.count(model) == 2, out
    code, out, err = await mlops("rollout", "status", f"nothing-{unique}")
    assert code == 3 and "has no rollouts" in err
    production = await h.registry.GetModelVersion(pb.GetModelVersionRequest(model=model, alias="production"))
    assert production.version == 1


async def test_the_migrated_schema_matches_the_models(database):
    from tests.integration.test_migrations import _differences

    await migrate(database, MIGRATIONS, SCHEMA)
    async with database.engine.connect() as connection:
        differences = await connection.run_sync(_differences, SCHEMA)
    assert differences == []
