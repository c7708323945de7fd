"""A new data set version re-evaluates the champion of each model trained outside the platform
(`training.external`): recorded in the registry, never published (no rollout), with the registry and
the store replaced by the in-memory fakes of test_evaluator_core."""

from __future__ import annotations

import pytest

from mlops.errors import IntegrityError, InvalidArgument
from mlops.events.v1 import data_pb2
from mlops.registry.v1 import registry_pb2 as pb
from tests.unit.test_evaluator_core import GOOD, NOISE, FakeRegistry, champion_version, world  # noqa: F401


class Registry(FakeRegistry):
    """The fake registry, with the data set at version `latest` and the spec's model external."""

    def __init__(self, sha256: str) -> None:
        super().__init__(sha256)
        self.spec.spec.spec.training.external = True
        self.latest = 2

    async def specs_for_dataset(self, dataset):
        return [self.spec] if dataset == self.spec.spec.spec.dataset else []

    async def dataset_version(self, dataset, version=0):
        found = pb.DatasetVersion()
        found.CopyFrom(self.dataset)
        found.version = version or self.latest
        return found


@pytest.fixture
def external(world):  # noqa: F811
    core, store, registry, sha = world
    core.registry = store.registry = replacement = Registry(sha)
    replacement.dataset.CopyFrom(registry.dataset)
    return core, store, replacement, sha


def record(sha: str, version: int = 2) -> data_pb2.DatasetVersionRecorded:
    return data_pb2.DatasetVersionRecorded(dataset="d", version=version, sha256=sha)


async def test_the_champion_is_evaluated_on_the_new_version_and_recorded_not_published(external):
    core, store, registry, sha = external
    registry.champion = champion_version(store, GOOD, 1)
    (evaluation,) = await core.reevaluate_external_champions(record(sha))
    assert (evaluation.model, evaluation.version, evaluation.champion_version) == ("m", 1, 0)
    assert (evaluation.dataset, evaluation.dataset_version, evaluation.dataset_sha256) == ("d", 2, sha)
    assert evaluation.passed and evaluation.metrics["accuracy"] == pytest.approx(1.0)
    assert evaluation.row_count > 0 and evaluation.latency_p99_ms > 0
    assert list(registry.recorded) == [evaluation.evaluation_id]
    # core.outbox is None: anything published would have failed; read again, it is recorded once
    assert await core.reevaluate_external_champions(record(sha)) == [evaluation]
    assert len(registry.recorded) == 1


async def test_a_champion_that_no_longer_passes_the_gates_is_recorded_as_failed(external):
    core, store, registry, sha = external
    registry.champion = champion_version(store, NOISE, 3)
    (evaluation,) = await core.reevaluate_external_champions(record(sha))
    assert evaluation.version == 3 and not evaluation.passed
    assert not {g.gate: g for g in evaluation.gates}["min"].passed


async def test_nothing_is_evaluated_for_a_model_the_platform_trains_or_one_without_a_champion(external):
    core, store, registry, sha = external
    assert await core.reevaluate_external_champions(record(sha)) == []  # no champion yet
    registry.champion = champion_version(store, GOOD, 1)
    registry.spec.spec.spec.training.external = False  # the trainer retrains it; the evaluator waits
    assert await core.reevaluate_external_champions(record(sha)) == []
    assert not registry.recorded


async def test_a_record_overtaken_by_a_later_version_re_evaluates_nothing(external):
    core, store, registry, sha = external
    registry.champion = champion_version(store, GOOD, 1)
    registry.latest = 3
    assert await core.reevaluate_external_champions(record(sha, version=2)) == []
    assert not registry.recorded


async def test_a_champion_that_cannot_read_the_new_rows_is_left_and_named(external, caplog):
    core, store, registry, sha = external
    registry.champion = champion_version(store, GOOD, 1, features=["a", "b", "shape"])
    assert await core.reevaluate_external_champions(record(sha)) == []
    assert "m v1 cannot be evaluated on d v2" in caplog.text and "shape" in caplog.text
    assert not registry.recorded


async def test_a_record_that_disagrees_with_the_registry_or_is_malformed_is_refused(external):
    core, store, registry, sha = external
    registry.champion = champion_version(store, GOOD, 1)
    with pytest.raises(IntegrityError, match="the registry holds " + sha):
        await core.reevaluate_external_champions(record("f" * 64))
    with pytest.raises(InvalidArgument, match="a version from 1"):
        await core.reevaluate_external_champions(record(sha, version=0))
    assert not registry.recorded
