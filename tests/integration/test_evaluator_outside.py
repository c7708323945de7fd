"""The evaluator against the real stack with models trained outside the platform: LightGBM through
onnxmltools and scikit-learn through skl2onnx (ZipMap, one input per column with a text column), their
signatures read from their graphs by `mlops.onnx_signature`; and the re-evaluation of an external model's
champion when its data set gets a new version, recorded in the registry and never published.

The evaluator runs in-process on the `tests.` topics, wired as its composition root wires it.
"""

from __future__ import annotations

import asyncio
import uuid

import numpy as np
import pandas as pd
import pytest
from sklearn.compose import ColumnTransformer
from sklearn.datasets import load_breast_cancer, load_wine
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from mlops.bus import EventConsumer, EventPublisher, Inbox, OutboxRelay
from mlops.db import migrate
from mlops.events.v1 import data_pb2, evaluation_pb2, training_pb2
from mlops.grpc import open_channel
from mlops.onnx_signature import read_signature
from mlops.outbox import Outbox
from mlops.registry.v1 import registry_pb2 as pb
from mlops.registry.v1 import registry_pb2_grpc
from mlops.store import open_store
from mlops.tabular import TEST, assign_splits, resolve_schema
from services.evaluator.__main__ import MIGRATIONS
from services.evaluator.clients import RegistryClient
from services.evaluator.core import EvaluatorCore
from services.evaluator.handlers import EvaluatorHandlers
from services.evaluator.settings import EvaluatorSettings
from services.evaluator.tables import SCHEMA
from tests.integration.bus_helpers import raw_reader, read_until, running
from tests.integration.conftest import eventually
from tests.integration.test_evaluator import (
    EVALUATED_TOPIC,
    TEST_FRACTION,
    VALIDATION_FRACTION,
    DataSet,
    Harness,
    apply_spec,
    commit_dataset,
    model_trained,
    verdict,
)

OPSETS = {"": 17, "ai.onnx.ml": 3}


@pytest.fixture(scope="module")
async def harness(database, kafka, bus, artifact_settings, telemetry):
    """The evaluator with both its subscriptions, against the running registry service."""
    settings = EvaluatorSettings(latency_sample_size=30, latency_warmup=3, metrics_port=None)
    channel = open_channel(settings.registry_addr)
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
    handlers = EvaluatorHandlers(core)
    consumer.subscribe(training_pb2.ModelTrained, handlers.on_model_trained)
    consumer.subscribe(data_pb2.DatasetVersionRecorded, handlers.on_dataset_recorded)
    relay = OutboxRelay(database, SCHEMA, publisher, bus)
    relay_task = asyncio.create_task(relay.run())
    async with running(consumer):
        yield Harness(registry_pb2_grpc.RegistryStub(channel), store, publisher, group)
    await relay.stop()
    await relay_task
    await publisher.stop()
    await channel.close()


def fit_rows(data: DataSet, task: str) -> pd.DataFrame:
    """The rows the evaluator will not score (all but the TEST split), for an outside model to fit on."""
    schema = resolve_schema(task=task, label="target", features=[], frame=data.frame)
    splits = assign_splits(
        data.frame, schema, validation_fraction=VALIDATION_FRACTION, test_fraction=TEST_FRACTION
    )
    return data.frame[splits != TEST]


async def register(
    h: Harness, model: str, spec_version: int, data: DataSet, onnx_bytes: bytes
) -> pb.ModelVersion:
    """A version of an outside model, its signature read from its graph against the data set's columns."""
    ref = await h.store.put_bytes(f"models/{model}", "model.onnx", onnx_bytes)
    signature = read_signature(onnx_bytes, columns=list(data.frame.columns), label="target")
    reply = await h.registry.RegisterModelVersion(
        pb.RegisterModelVersionRequest(
            model=model,
            run_id=uuid.uuid4().hex,
            spec_version=spec_version,
            dataset=data.name,
            dataset_version=data.version.version,
            dataset_sha256=data.version.sha256,
            artifact_uri=ref.uri,
            artifact_sha256=ref.sha256,
            artifact_size_bytes=ref.size,
            signature=signature,
        )
    )
    return reply.model_version


def lightgbm_wine(rows: pd.DataFrame) -> bytes:
    import lightgbm
    from onnxmltools import convert_lightgbm
    from onnxmltools.convert.common.data_types import FloatTensorType

    x = rows.drop(columns=["target"]).to_numpy()
    model = lightgbm.LGBMClassifier(n_estimators=30, num_leaves=7, verbose=-1).fit(x, rows["target"])
    converted = convert_lightgbm(
        model, initial_types=[("features", FloatTensorType([None, x.shape[1]]))], target_opset=15
    )
    return converted.SerializeToString()


def sklearn_wine(rows: pd.DataFrame, *, columns: list[str] | None = None) -> bytes:
    """Logistic regression with skl2onnx's ZipMap; with `columns`, it sees only those (the others weigh 0)."""
    from skl2onnx import to_onnx

    x = rows.drop(columns=["target"])
    kept = columns or list(x.columns)
    select = ColumnTransformer([("kept", StandardScaler(), kept)])
    model = Pipeline([("select", select), ("lr", LogisticRegression())]).fit(x, rows["target"])
    return to_onnx(model, x.astype(np.float32).iloc[:1], target_opset=OPSETS).SerializeToString()


async def test_a_scikit_learn_challenger_is_gated_against_a_lightgbm_champion(harness, kafka, unique):
    dataset_name, model = f"wine-{unique}", f"wine-outside-{unique}"
    data = await commit_dataset(harness, dataset_name, load_wine(as_frame=True).frame)
    gate = pb.GateSpec(metric="accuracy", min=0.5, max_regression=0.02)
    spec_version = await apply_spec(harness, model, dataset_name, "classification", gate, slices=["alcohol"])
    rows = fit_rows(data, "classification")
    champion = await register(harness, model, spec_version, data, lightgbm_wine(rows))
    challenger = await register(
        harness, model, spec_version, data, sklearn_wine(rows, columns=["ash", "hue"])
    )
    assert {o.role for o in challenger.signature.outputs} == {"label", "probabilities"}
    await harness.registry.SetAlias(
        pb.SetAliasRequest(model=model, alias="production", version=champion.version, actor="tests")
    )

    async with raw_reader(kafka, EVALUATED_TOPIC) as reader:
        await harness.publisher.publish(model_trained(challenger))
        event = await verdict(reader, challenger)

    assert event.champion_version == champion.version
    assert (
        set(event.metrics) == set(event.champion_metrics) == {"accuracy", "macro_f1", "roc_auc", "log_loss"}
    )
    assert event.champion_metrics["accuracy"] > 0.85
    gates = {g.gate: g for g in event.gates}
    assert not event.passed and not gates["max_regression"].passed
    assert all(s.metrics and s.champion_metrics for s in event.slices)


async def test_one_input_per_column_with_a_text_column_is_scored(harness, kafka, unique):
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType, StringTensorType

    frame = load_breast_cancer(as_frame=True).frame[["mean radius", "mean texture", "target"]]
    frame = frame.rename(columns={"mean radius": "radius", "mean texture": "texture"})
    frame.insert(1, "size", np.where(frame["radius"] > 15, "large", "small"))
    dataset_name, model = f"cancer-{unique}", f"cancer-outside-{unique}"
    data = await commit_dataset(harness, dataset_name, frame)
    spec_version = await apply_spec(
        harness,
        model,
        dataset_name,
        "classification",
        pb.GateSpec(metric="roc_auc", min=0.8),
        slices=["size"],
    )
    rows = fit_rows(data, "classification")
    transform = ColumnTransformer(
        [("numbers", StandardScaler(), ["radius", "texture"]), ("text", OneHotEncoder(), ["size"])]
    )
    fitted = Pipeline([("columns", transform), ("lr", LogisticRegression())]).fit(
        rows.drop(columns=["target"]), rows["target"]
    )
    types = [("radius", FloatTensorType([None, 1])), ("size", StringTensorType([None, 1]))]
    types.append(("texture", FloatTensorType([None, 1])))
    version = await register(
        harness,
        model,
        spec_version,
        data,
        to_onnx(fitted, initial_types=types, target_opset=OPSETS).SerializeToString(),
    )
    assert [s.datatype for s in version.signature.inputs] == ["FP32", "BYTES", "FP32"]

    async with raw_reader(kafka, EVALUATED_TOPIC) as reader:
        await harness.publisher.publish(model_trained(version))
        event = await verdict(reader, version)
    assert event.passed, [g.message for g in event.gates]
    assert event.metrics["roc_auc"] > 0.9
    assert {s.value for s in event.slices} == {"large", "small"}


async def test_a_data_commit_re_evaluates_the_external_champion_and_publishes_nothing(harness, kafka, unique):
    """The champion is evaluated on the new version and the evaluation recorded; no ModelEvaluated
    leaves for it. The proof of absence: a challenger's verdict, published after the data commit on
    the model's partition, is the first record there that names the model."""
    dataset_name, model = f"wine-{unique}", f"wine-recheck-{unique}"
    frame = load_wine(as_frame=True).frame
    first = await commit_dataset(harness, dataset_name, frame)
    spec_version = await apply_spec(
        harness, model, dataset_name, "classification", pb.GateSpec(metric="accuracy", min=0.5)
    )
    rows = fit_rows(first, "classification")
    champion = await register(harness, model, spec_version, first, lightgbm_wine(rows))
    await harness.registry.SetAlias(
        pb.SetAliasRequest(model=model, alias="production", version=champion.version, actor="tests")
    )
    second = await commit_dataset(harness, dataset_name, frame.sample(frac=1.0, random_state=3))
    assert second.version.version == first.version.version + 1

    async with raw_reader(kafka, EVALUATED_TOPIC) as reader:
        # the registry announces the version on the platform's topic; the evaluator here reads `tests.`
        await harness.publisher.publish(
            data_pb2.DatasetVersionRecorded(
                dataset=dataset_name,
                version=second.version.version,
                sha256=second.version.sha256,
                uri=second.version.uri,
                format="csv",
            )
        )

        async def recorded():
            reply = await harness.registry.ListEvaluations(
                pb.ListEvaluationsRequest(model=model, version=champion.version)
            )
            return [e for e in reply.evaluations if e.dataset_version == second.version.version]

        (evaluation,) = await eventually(recorded, timeout_s=60, what="the champion's re-evaluation")
        assert evaluation.passed and evaluation.champion_version == 0
        assert evaluation.dataset_sha256 == second.version.sha256 and evaluation.row_count > 20
        assert evaluation.metrics["accuracy"] > 0.85

        challenger = await register(
            harness, model, spec_version, second, sklearn_wine(fit_rows(second, "classification"))
        )
        await harness.publisher.publish(model_trained(challenger))
        record = await read_until(
            reader, lambda r: evaluation_pb2.ModelEvaluated.FromString(r.value).model == model, timeout_s=60
        )
    event = evaluation_pb2.ModelEvaluated.FromString(record.value)
    assert event.version == challenger.version, "the champion's re-evaluation was published"
    assert event.champion_version == champion.version
