"""The evaluator against the real stack: the registry service, PostgreSQL, Kafka, S3 and Jaeger.

The models are built here with torch and exported to ONNX by the platform's contract, so that the
tests do not depend on the trainer: a logistic regression on scikit-learn's wine data, a worse one
that sees a single feature, and a linear regression on the diabetes data. Each test uses its own
model and data set names, and the evaluator runs in-process on the `tests.` topics.
"""

from __future__ import annotations

import asyncio
import io
import uuid
from dataclasses import dataclass

import grpc
import numpy as np
import pandas as pd
import pytest
import torch
from aiokafka import AIOKafkaProducer
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry import trace
from sklearn.datasets import load_diabetes, load_wine
from sqlalchemy import text

from mlops.bus import EventConsumer, EventPublisher, Inbox, OutboxRelay
from mlops.db import migrate
from mlops.events.v1 import common_pb2, evaluation_pb2, training_pb2
from mlops.grpc import open_channel
from mlops.outbox import Outbox
from mlops.registry.v1 import registry_pb2 as pb
from mlops.registry.v1 import registry_pb2_grpc
from mlops.store import open_store
from mlops.tabular import TRAIN, assign_splits, feature_matrix, label_vector, resolve_schema
from services.evaluator.__main__ import MIGRATIONS
from services.evaluator.clients import RegistryClient
from services.evaluator.core import EvaluatorCore
from services.evaluator.handlers import EvaluatorHandlers
from services.evaluator.settings import EvaluatorSettings
from services.evaluator.tables import SCHEMA
from tests.integration.bus_helpers import raw_reader, read_until, running
from tests.integration.conftest import TEST_TOPIC_PREFIX, eventually, jaeger_trace

TRAINED_TOPIC = TEST_TOPIC_PREFIX + "mlops.model.trained"
EVALUATED_TOPIC = TEST_TOPIC_PREFIX + "mlops.model.evaluated"
VALIDATION_FRACTION, TEST_FRACTION = 0.15, 0.25


@dataclass
class Harness:
    registry: registry_pb2_grpc.RegistryStub
    store: object
    publisher: EventPublisher
    group: str


@pytest.fixture(scope="module")
async def harness(database, kafka, bus, artifact_settings, telemetry):
    """The evaluator wired as its composition root wires it, against the running registry service."""
    settings = EvaluatorSettings(latency_sample_size=50, latency_warmup=5, metrics_port=None)
    channel = open_channel(settings.registry_addr)
    try:
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    except grpc.aio.AioRpcError as error:
        pytest.fail(
            f"the registry is not answering at {settings.registry_addr} ({error.code().name}); "
            "run `make up` (or `bash infra/local/services.sh up`) first",
            pytrace=False,
        )
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    await migrate(database, MIGRATIONS, SCHEMA)
    store = open_store(artifact_settings)
    publisher = EventPublisher(kafka, bus, source="mlops-evaluator-tests")
    await publisher.start()
    outbox = Outbox(SCHEMA, source="mlops-evaluator-tests", topic_prefix=bus.topic_prefix)
    core = EvaluatorCore(RegistryClient(channel), store, outbox, settings)
    group = f"tests-evaluator-{uuid.uuid4().hex[:8]}"
    consumer = EventConsumer(
        kafka, bus, group_id=group, publisher=publisher, database=database, inbox=Inbox(SCHEMA), from_end=True
    )
    consumer.subscribe(training_pb2.ModelTrained, EvaluatorHandlers(core).on_model_trained)
    relay = OutboxRelay(database, SCHEMA, publisher, bus)
    relay_task = asyncio.create_task(relay.run())
    async with running(consumer):
        yield Harness(registry_pb2_grpc.RegistryStub(channel), store, publisher, group)
    await relay.stop()
    await relay_task
    await publisher.stop()
    await channel.close()


# --- models by the contract: input FP32 [-1, F]; probabilities + label, or prediction --------------


class Classifier(torch.nn.Module):
    def __init__(self, mean: np.ndarray, std: np.ndarray, linear: torch.nn.Linear) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32))
        self.linear = linear

    def forward(self, x):
        logits = self.linear((x - self.mean) / self.std)
        return torch.softmax(logits, dim=1), torch.argmax(logits, dim=1)


class Regressor(torch.nn.Module):
    def __init__(self, linear: torch.nn.Linear) -> None:
        super().__init__()
        self.linear = linear

    def forward(self, x):
        return self.linear(x).squeeze(-1)


def export(module: torch.nn.Module, n_features: int, outputs: list[str]) -> bytes:
    """torch.export-based ONNX export (torch's default), with a dynamic batch dimension."""
    module.eval()
    program = torch.onnx.export(
        module,
        (torch.zeros(2, n_features),),
        input_names=["input"],
        output_names=outputs,
        dynamic_shapes=({0: torch.export.Dim("batch")},),
        dynamo=True,
        verbose=False,
    )
    return program.model_proto.SerializeToString()


def train_classifier(
    x: np.ndarray, y: np.ndarray, n_classes: int, *, only_feature: int | None = None
) -> bytes:
    """Logistic regression by full-batch Adam; with `only_feature`, it sees that one column only."""
    torch.manual_seed(0)
    mean, std = x.mean(axis=0), x.std(axis=0) + 1e-6
    linear = torch.nn.Linear(x.shape[1], n_classes)
    inputs = torch.tensor((x - mean) / std, dtype=torch.float32)
    mask = torch.ones(x.shape[1])
    if only_feature is not None:
        mask = torch.zeros(x.shape[1])
        mask[only_feature] = 1.0
    optimiser = torch.optim.Adam(linear.parameters(), lr=0.1)
    target = torch.tensor(y)
    for _ in range(200):
        optimiser.zero_grad()
        loss = torch.nn.functional.cross_entropy(linear(inputs * mask), target)
        loss.backward()
        optimiser.step()
    with torch.no_grad():
        linear.weight *= mask
    return export(Classifier(mean, std, linear), x.shape[1], ["probabilities", "label"])


def train_regressor(x: np.ndarray, y: np.ndarray) -> bytes:
    """Least squares, closed form."""
    design = np.hstack([x, np.ones((len(x), 1))])
    coefficients, *_ = np.linalg.lstsq(design, y, rcond=None)
    linear = torch.nn.Linear(x.shape[1], 1)
    with torch.no_grad():
        linear.weight.copy_(torch.tensor(coefficients[:-1][None, :], dtype=torch.float32))
        linear.bias.copy_(torch.tensor(coefficients[-1:], dtype=torch.float32))
    return export(Regressor(linear), x.shape[1], ["prediction"])


# --- registry and bus helpers --------------------------------------------------------------------


@dataclass
class DataSet:
    name: str
    frame: pd.DataFrame
    version: pb.DatasetVersion


async def commit_dataset(h: Harness, name: str, frame: pd.DataFrame) -> DataSet:
    data = frame.to_csv(index=False).encode()
    ref = await h.store.put_bytes(f"datasets/{name}", "data.csv", data)
    reply = await h.registry.RecordDatasetVersion(
        pb.RecordDatasetVersionRequest(
            dataset=name, uri=ref.uri, sha256=ref.sha256, format="csv", committed_by="tests"
        )
    )
    return DataSet(name, pd.read_csv(io.BytesIO(data)), reply.dataset_version)


async def apply_spec(h: Harness, model: str, dataset: str, task: str, gate: pb.GateSpec, slices=()) -> int:
    body = pb.ModelSpecBody(dataset=dataset, task=task, label="target", slices=list(slices), gate=gate)
    body.training.validation_fraction = VALIDATION_FRACTION
    body.training.test_fraction = TEST_FRACTION
    spec = pb.ModelSpec(
        api_version="mlops/v1", kind="ModelSpec", metadata=pb.ObjectMeta(name=model), spec=body
    )
    # versions are registered here by hand: the stack's trainer must not train this model too
    spec.spec.training.external = True
    reply = await h.registry.ApplyModelSpec(pb.ApplyModelSpecRequest(spec=spec, applied_by="tests"))
    return reply.spec_version


def training_rows(data: DataSet, task: str):
    """What a trainer would fit on: the TRAIN split of mlops.tabular, never the test rows."""
    schema = resolve_schema(task=task, label="target", features=[], frame=data.frame)
    splits = assign_splits(
        data.frame, schema, validation_fraction=VALIDATION_FRACTION, test_fraction=TEST_FRACTION
    )
    train = data.frame[splits == TRAIN]
    return schema, feature_matrix(train, schema), label_vector(train, schema)


async def register(
    h: Harness, model: str, spec_version: int, data: DataSet, schema, onnx_bytes: bytes, *, sha256: str = ""
):
    """`sha256`: what the registry records for the bytes, when not their own."""
    ref = await h.store.put_bytes(f"models/{model}", "model.onnx", onnx_bytes)
    outputs = (
        [
            pb.TensorSpec(name="probabilities", datatype="FP32", shape=[-1, len(schema.classes)]),
            pb.TensorSpec(name="label", datatype="INT64", shape=[-1]),
        ]
        if schema.task == "classification"
        else [pb.TensorSpec(name="prediction", datatype="FP32", shape=[-1])]
    )
    signature = pb.ModelSignature(
        inputs=[pb.TensorSpec(name="input", datatype="FP32", shape=[-1, len(schema.features)])],
        outputs=outputs,
        feature_names=schema.features,
        class_labels=schema.classes,
        task=schema.task,
        onnx_opset=17,
    )
    reply = await h.registry.RegisterModelVersion(
        pb.RegisterModelVersionRequest(
            model=model,
            run_id=uuid.uuid4().hex,
            spec_version=spec_version,
            dataset=data.name,
            dataset_version=data.version.version,
            dataset_sha256=data.version.sha256,
            artifact_uri=ref.uri,
            artifact_sha256=sha256 or ref.sha256,
            artifact_size_bytes=ref.size,
            signature=signature,
        )
    )
    return reply.model_version


def model_trained(version: pb.ModelVersion) -> training_pb2.ModelTrained:
    return training_pb2.ModelTrained(
        model=version.model,
        version=version.version,
        spec_version=version.spec_version,
        dataset=version.dataset,
        dataset_version=version.dataset_version,
        dataset_sha256=version.dataset_sha256,
        run_id=version.run_id,
        trigger=common_pb2.TRAINING_TRIGGER_DATA_COMMITTED,
        artifact_uri=version.artifact_uri,
        artifact_sha256=version.artifact_sha256,
        artifact_size_bytes=version.artifact_size_bytes,
        task=version.signature.task,
        feature_names=version.signature.feature_names,
        class_labels=version.signature.class_labels,
    )


def evaluated_for(version: pb.ModelVersion):
    def matches(record) -> bool:
        event = evaluation_pb2.ModelEvaluated.FromString(record.value)
        return event.model == version.model and event.version == version.version

    return matches


async def verdict(reader, version: pb.ModelVersion) -> evaluation_pb2.ModelEvaluated:
    record = await read_until(reader, evaluated_for(version), timeout_s=60)
    return evaluation_pb2.ModelEvaluated.FromString(record.value)


def wine(unique: str) -> tuple[str, pd.DataFrame]:
    frame = load_wine(as_frame=True).frame
    return f"wine-{unique}", frame


# --- the tests -----------------------------------------------------------------------------------


async def test_a_worse_challenger_fails_the_regression_gate_against_the_production_champion(
    harness, kafka, unique
):
    dataset_name, frame = wine(unique)
    model = f"wine-{unique}"
    data = await commit_dataset(harness, dataset_name, frame)
    gate = pb.GateSpec(metric="accuracy", min=0.3, max_regression=0.02, max_p99_latency_ms=250)
    spec_version = await apply_spec(harness, model, dataset_name, "classification", gate, slices=["alcohol"])
    schema, x, y = training_rows(data, "classification")
    champion = await register(harness, model, spec_version, data, schema, train_classifier(x, y, 3))
    weak_feature = schema.features.index("ash")
    challenger = await register(
        harness, model, spec_version, data, schema, train_classifier(x, y, 3, only_feature=weak_feature)
    )
    await harness.registry.SetAlias(
        pb.SetAliasRequest(model=model, alias="production", version=champion.version, actor="tests")
    )

    async with raw_reader(kafka, EVALUATED_TOPIC) as reader:
        await harness.publisher.publish(model_trained(challenger))
        event = await verdict(reader, challenger)

    assert not event.passed
    assert event.champion_version == champion.version
    assert event.primary_metric == "accuracy"
    assert set(event.metrics) == {"accuracy", "macro_f1", "roc_auc", "log_loss"}
    assert event.champion_metrics["accuracy"] > 0.85
    assert event.metrics["accuracy"] < event.champion_metrics["accuracy"] - 0.02
    gates = {g.gate: g for g in event.gates}
    regression = gates["max_regression"]
    assert not regression.passed and not regression.skipped
    expected = event.champion_metrics["accuracy"] - event.metrics["accuracy"]
    assert regression.observed == pytest.approx(expected)
    assert regression.threshold == pytest.approx(0.02)
    assert f"(champion v{champion.version})" in regression.message
    assert f"regressed by {expected:.4g}" in regression.message
    assert f"failed by {expected - 0.02:.4g}" in regression.message
    assert gates["max_p99_latency_ms"].passed and 0 < event.latency_p50_ms <= event.latency_p99_ms
    assert event.model_size_bytes == challenger.artifact_size_bytes
    assert event.row_count > 20 and event.dataset_sha256 == data.version.sha256
    assert event.slices and {s.column for s in event.slices} == {"alcohol"}
    assert sum(s.row_count for s in event.slices) == event.row_count
    assert all(s.champion_metrics for s in event.slices)

    stored = await harness.registry.ListEvaluations(
        pb.ListEvaluationsRequest(model=model, version=challenger.version)
    )
    assert [e.evaluation_id for e in stored.evaluations] == [event.evaluation_id]
    assert not stored.evaluations[0].passed
    assert list(stored.evaluations[0].gates) == list(event.gates)


async def test_a_good_first_version_passes_once_however_often_it_is_announced(
    harness, kafka, database, unique, jaeger_url, telemetry
):
    dataset_name, frame = wine(unique)
    model = f"wine-first-{unique}"
    data = await commit_dataset(harness, dataset_name, frame)
    gate = pb.GateSpec(metric="macro_f1", min=0.85, max_regression=0.01, max_p99_latency_ms=250)
    spec_version = await apply_spec(harness, model, dataset_name, "classification", gate)
    schema, x, y = training_rows(data, "classification")
    version = await register(harness, model, spec_version, data, schema, train_classifier(x, y, 3))
    trained = model_trained(version)
    first_id, again_id = str(uuid.uuid4()), str(uuid.uuid4())

    tracer = trace.get_tracer("tests")
    async with raw_reader(kafka, EVALUATED_TOPIC) as reader:
        with tracer.start_as_current_span("upstream data commit") as root:
            trace_id = format(root.get_span_context().trace_id, "032x")
            await harness.publisher.publish(trained, event_id=first_id)
        event = await verdict(reader, version)
        # Kafka redelivers the same event; the trainer announces the same version again under a new id
        await harness.publisher.publish(trained, event_id=first_id)
        await harness.publisher.publish(trained, event_id=again_id)

        async def both_handled():
            async with database.session() as session:
                count = await session.exec(
                    text(f'SELECT count(*) FROM "{SCHEMA}".inbox WHERE consumer = :c AND event_id = :e'),
                    params={"c": harness.group, "e": again_id},
                )
                return count.scalar_one() == 1

        await eventually(both_handled, timeout_s=30, what="the repeated announcement handled")
        with pytest.raises(AssertionError, match="no matching record"):
            await read_until(reader, evaluated_for(version), timeout_s=2)

    assert event.passed and event.champion_version == 0 and not event.champion_metrics
    gates = {g.gate: g for g in event.gates}
    assert gates["min"].passed and gates["min"].observed == pytest.approx(event.metrics["macro_f1"])
    assert gates["max_regression"].skipped and "no champion" in gates["max_regression"].message
    stored = await harness.registry.ListEvaluations(
        pb.ListEvaluationsRequest(model=model, version=version.version)
    )
    assert len(stored.evaluations) == 1 and stored.evaluations[0].passed

    telemetry.provider.force_flush()

    def evaluation_spans():
        spans = {span.name: span for span in jaeger_trace(jaeger_url, trace_id)}
        wanted = {
            f"process {TRAINED_TOPIC}",
            "evaluate model",
            "score challenger",
            f"publish {EVALUATED_TOPIC}",
        }
        return spans if wanted <= set(spans) else None

    spans = await eventually(evaluation_spans, timeout_s=30, what="the evaluation's spans in Jaeger")
    consumer_span, evaluate = spans[f"process {TRAINED_TOPIC}"], spans["evaluate model"]
    assert evaluate.parent_id == consumer_span.span_id, "the evaluation continues the consumer's span"
    assert spans["score challenger"].parent_id == evaluate.span_id
    for span in (consumer_span, evaluate):
        assert span.attributes["mlops.model.name"] == model
        assert int(span.attributes["mlops.model.version"]) == version.version
        assert span.attributes["mlops.dataset.name"] == dataset_name
        assert int(span.attributes["mlops.dataset.version"]) == data.version.version


async def test_a_regression_model_gets_rmse_mae_and_r2_per_slice(harness, kafka, unique):
    frame = load_diabetes(as_frame=True, scaled=False).frame
    dataset_name, model = f"diabetes-{unique}", f"diabetes-{unique}"
    data = await commit_dataset(harness, dataset_name, frame)
    gate = pb.GateSpec(metric="rmse", max=80.0, max_regression=1.0, max_model_size_mb=1.0)
    spec_version = await apply_spec(harness, model, dataset_name, "regression", gate, slices=["sex", "age"])
    schema, x, y = training_rows(data, "regression")
    version = await register(harness, model, spec_version, data, schema, train_regressor(x, y))

    async with raw_reader(kafka, EVALUATED_TOPIC) as reader:
        await harness.publisher.publish(model_trained(version))
        event = await verdict(reader, version)

    assert set(event.metrics) == {"rmse", "mae", "r2"}
    assert 40 < event.metrics["rmse"] < 80 and event.metrics["mae"] < event.metrics["rmse"]
    assert 0.2 < event.metrics["r2"] < 0.8
    assert event.passed, [g.message for g in event.gates]
    assert [g.gate for g in event.gates] == ["max", "max_regression", "max_model_size_mb"]
    sexes = [s for s in event.slices if s.column == "sex"]
    ages = [s for s in event.slices if s.column == "age"]
    assert sorted(s.value for s in sexes) == ["1", "2"]
    assert len(ages) == 4 and all(s.value.startswith("(") for s in ages), "age is binned by quantiles"
    assert all(set(s.metrics) == {"rmse", "mae", "r2"} for s in [*sexes, *ages])


async def test_a_model_whose_bytes_do_not_match_its_sha256_is_refused_to_the_dead_letters(
    harness, kafka, unique
):
    dataset_name, frame = wine(unique)
    model = f"wine-corrupt-{unique}"
    data = await commit_dataset(harness, dataset_name, frame)
    spec_version = await apply_spec(
        harness, model, dataset_name, "classification", pb.GateSpec(metric="accuracy")
    )
    schema, x, y = training_rows(data, "classification")
    # The registry's record of the bytes is not what the store holds (tampered after registration).
    version = await register(
        harness, model, spec_version, data, schema, train_classifier(x, y, 3), sha256="0" * 64
    )
    trained = model_trained(version)

    async with raw_reader(kafka, TRAINED_TOPIC + ".dlq") as reader:
        await harness.publisher.publish(trained)
        record = await read_until(
            reader, lambda r: training_pb2.ModelTrained.FromString(r.value).model == model, timeout_s=60
        )
    headers = {name: value.decode() for name, value in record.headers}
    assert headers["mlops_dlq_error_type"] == "IntegrityError"
    assert "0" * 64 in headers["mlops_dlq_reason"] and "refusing to use it" in headers["mlops_dlq_reason"]
    stored = await harness.registry.ListEvaluations(pb.ListEvaluationsRequest(model=model))
    assert not stored.evaluations


async def test_a_forged_announcement_of_other_bytes_is_dead_lettered_and_nothing_is_scored(
    harness, kafka, unique
):
    """A ModelTrained written with a plain producer, naming a registered version but another artifact (a
    model that would pass): refused with the registry's record named, never scored, nothing recorded."""
    dataset_name, frame = wine(unique)
    model = f"wine-forged-{unique}"
    data = await commit_dataset(harness, dataset_name, frame)
    spec_version = await apply_spec(
        harness, model, dataset_name, "classification", pb.GateSpec(metric="accuracy")
    )
    schema, x, y = training_rows(data, "classification")
    version = await register(
        harness, model, spec_version, data, schema, train_classifier(x, y, 3, only_feature=0)
    )
    other = await harness.store.put_bytes(f"models/{model}-other", "model.onnx", train_classifier(x, y, 3))
    forged = model_trained(version)
    forged.artifact_uri, forged.artifact_sha256 = other.uri, other.sha256

    async with raw_reader(kafka, TRAINED_TOPIC + ".dlq") as reader:
        producer = AIOKafkaProducer(**kafka.client_options())
        await producer.start()
        try:
            await producer.send_and_wait(
                TRAINED_TOPIC,
                key=model.encode(),
                value=forged.SerializeToString(),
                headers=[("ce_type", b"mlops.model.trained.v1"), ("content-type", b"application/protobuf")],
            )
        finally:
            await producer.stop()
        record = await read_until(
            reader, lambda r: training_pb2.ModelTrained.FromString(r.value).model == model, timeout_s=60
        )
    reason = dict(record.headers)["mlops_dlq_reason"].decode()
    assert f"ModelTrained of {model} v{version.version} disagrees with the registry's record" in reason
    assert f"artifact_sha256 {other.sha256!r} (the registry holds {version.artifact_sha256!r})" in reason
    stored = await harness.registry.ListEvaluations(pb.ListEvaluationsRequest(model=model))
    assert not stored.evaluations
