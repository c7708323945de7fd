"""The evaluator's core with the registry and the store replaced by in-memory fakes."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mlops.errors import FailedPrecondition, InvalidArgument, NotFound
from mlops.events.v1 import training_pb2
from mlops.registry.v1 import registry_pb2 as pb
from services.evaluator.core import EvaluatorCore
from services.evaluator.settings import EvaluatorSettings
from tests.unit.test_evaluator_scoring import linear_classifier

FEATURES = ["a", "b", "colour"]
CLASSES = ["no", "yes"]
GOOD = linear_classifier(np.array([[-5.0, 5.0], [0, 0], [0, 0]]), np.zeros(2))
NOISE = linear_classifier(np.array([[0, 0], [-5.0, 5.0], [0, 0]]), np.zeros(2))


class FakeStore:
    def __init__(self, csv: Path) -> None:
        self.csv = csv
        self.models: dict[str, bytes] = {}

    def add_model(self, data: bytes) -> tuple[str, str]:
        sha = hashlib.sha256(data).hexdigest()
        uri = f"s3://mlops/models/m/{sha}/model.onnx"
        self.models[uri] = data
        return uri, sha

    async def get_file(self, uri, dest: Path, sha256=None) -> Path:
        shutil.copy(self.csv, dest)
        return dest

    async def get_bytes(self, uri, sha256=None) -> bytes:
        return self.models[uri]


class FakeRegistry:
    def __init__(self, sha256: str) -> None:
        body = pb.ModelSpecBody(task="classification", label="target", dataset="d")
        body.training.validation_fraction = 0.15
        body.training.test_fraction = 0.25
        body.gate.metric = "accuracy"
        body.gate.min = 0.9
        body.gate.max_regression = 0.01
        self.spec = pb.ModelSpecVersion(model="m", version=1, spec=pb.ModelSpec(spec=body))
        self.dataset = pb.DatasetVersion(
            dataset="d", version=1, uri="s3://mlops/d.csv", sha256=sha256, format="csv"
        )
        self.champion: pb.ModelVersion | None = None
        self.recorded: dict[str, pb.Evaluation] = {}
        self.versions: dict[tuple[str, int], pb.ModelVersion] = {}

    async def model_version(self, model, version):
        if (model, version) not in self.versions:
            raise NotFound(f"model {model!r} has no version {version}")
        return self.versions[(model, version)]

    async def model_spec(self, model, version):
        return self.spec

    async def dataset_version(self, dataset, version):
        return self.dataset

    async def aliased_version(self, model, alias):
        return self.champion

    async def record_evaluation(self, evaluation):
        created = evaluation.evaluation_id not in self.recorded
        self.recorded.setdefault(evaluation.evaluation_id, evaluation)
        return pb.RecordEvaluationResponse(
            evaluation=self.recorded[evaluation.evaluation_id], created=created
        )


@pytest.fixture
def world(tmp_path):
    rng = np.random.default_rng(1)
    a = rng.normal(size=300)
    frame = pd.DataFrame(
        {
            "a": a,
            "b": rng.normal(size=300),
            "colour": rng.choice(["red", "blue"], 300),
            "target": np.where(a > 0, "yes", "no"),
        }
    )
    path = tmp_path / "d.csv"
    frame.to_csv(path, index=False)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    store, registry = FakeStore(path), FakeRegistry(sha)
    store.registry = registry
    core = EvaluatorCore(
        registry,
        store,
        outbox=None,
        settings=EvaluatorSettings(execution_provider="cpu", latency_sample_size=20),
    )
    return core, store, registry, sha


def trained(store: FakeStore, data: bytes, version: int, sha: str) -> training_pb2.ModelTrained:
    """The announcement of a version, registered first as the trainer does."""
    uri, artifact_sha = store.add_model(data)
    store.registry.versions[("m", version)] = pb.ModelVersion(
        model="m",
        version=version,
        spec_version=1,
        dataset="d",
        dataset_version=1,
        dataset_sha256=sha,
        artifact_uri=uri,
        artifact_sha256=artifact_sha,
        signature=pb.ModelSignature(feature_names=FEATURES, class_labels=CLASSES, task="classification"),
    )
    return training_pb2.ModelTrained(
        model="m",
        version=version,
        spec_version=1,
        dataset="d",
        dataset_version=1,
        dataset_sha256=sha,
        artifact_uri=uri,
        artifact_sha256=artifact_sha,
        task="classification",
        feature_names=FEATURES,
        class_labels=CLASSES,
    )


def champion_version(store: FakeStore, data: bytes, version: int, features=FEATURES) -> pb.ModelVersion:
    uri, sha = store.add_model(data)
    return pb.ModelVersion(
        model="m",
        version=version,
        artifact_uri=uri,
        artifact_sha256=sha,
        signature=pb.ModelSignature(feature_names=features, class_labels=CLASSES, task="classification"),
    )


async def test_a_noisy_challenger_loses_to_the_champion_on_the_same_rows(world):
    core, store, registry, sha = world
    registry.champion = champion_version(store, GOOD, 1)
    event = await core.evaluate(trained(store, NOISE, 2, sha))
    assert not event.passed and event.champion_version == 1
    assert event.champion_metrics["accuracy"] == pytest.approx(1.0)
    gates = {g.gate: g for g in event.gates}
    assert not gates["min"].passed and not gates["max_regression"].passed
    assert gates["max_regression"].observed == pytest.approx(1.0 - event.metrics["accuracy"])
    assert event.evaluation_id in registry.recorded


async def test_a_champion_that_cannot_read_the_rows_is_named_and_the_comparison_skipped(world):
    core, store, registry, sha = world
    registry.champion = champion_version(store, GOOD, 1, features=["a", "b", "shape"])
    event = await core.evaluate(trained(store, GOOD, 2, sha))
    regression = {g.gate: g for g in event.gates}["max_regression"]
    assert regression.skipped and "champion v1 has no accuracy" in regression.message
    assert event.champion_version == 1 and not event.champion_metrics
    assert event.passed


async def test_the_champion_itself_is_not_compared_with_itself(world):
    core, store, registry, sha = world
    registry.champion = champion_version(store, GOOD, 2)
    event = await core.evaluate(trained(store, GOOD, 2, sha))
    assert event.champion_version == 0
    assert "no champion" in {g.gate: g for g in event.gates}["max_regression"].message


async def test_a_data_set_that_changed_under_the_model_is_refused(world):
    core, store, _, _ = world
    with pytest.raises(InvalidArgument, match="but the model was trained on " + "f" * 64):
        await core.evaluate(trained(store, GOOD, 2, "f" * 64))


async def test_an_evaluation_recorded_before_is_published_as_recorded(world):
    core, store, registry, sha = world
    announcement = trained(store, GOOD, 2, sha)
    first = await core.evaluate(announcement)
    registry.champion = champion_version(store, NOISE, 1)  # the world moved on; the record stands
    again = await core.evaluate(announcement)
    assert again.evaluation_id == first.evaluation_id
    assert again.champion_version == 0 and list(again.gates) == list(first.gates)
    assert len(registry.recorded) == 1


async def test_the_challenger_is_the_registered_artifact_not_the_announced_one(world):
    """An announcement that agrees with the registry but leaves the artifact out is scored on the
    registry's bytes (GOOD), whatever the event's feature list claims."""
    core, store, registry, sha = world
    announcement = trained(store, GOOD, 2, sha)
    announcement.ClearField("artifact_uri")
    announcement.ClearField("artifact_sha256")
    del announcement.feature_names[:]
    event = await core.evaluate(announcement)
    assert event.passed and event.metrics["accuracy"] == pytest.approx(1.0)
    assert event.artifact_sha256 == registry.versions[("m", 2)].artifact_sha256


async def test_an_announced_artifact_other_than_the_registered_one_is_refused(world):
    core, store, registry, sha = world
    announcement = trained(store, GOOD, 2, sha)
    announcement.artifact_uri, announcement.artifact_sha256 = store.add_model(NOISE)
    with pytest.raises(
        FailedPrecondition, match="disagrees with the registry's record: artifact_uri"
    ) as refused:
        await core.evaluate(announcement)
    assert registry.versions[("m", 2)].artifact_sha256 in refused.value.message
    assert not registry.recorded


async def test_a_version_the_registry_does_not_hold_is_refused(world):
    core, store, registry, sha = world
    announcement = trained(store, GOOD, 2, sha)
    announcement.version = 7
    with pytest.raises(FailedPrecondition, match="m v7 names a version the registry does not hold"):
        await core.evaluate(announcement)
    assert not registry.recorded
