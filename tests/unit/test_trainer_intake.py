"""Retrain requests that no trainer could act on are refused before anything is asked or queued."""

from __future__ import annotations

import pytest

from mlops.errors import InvalidArgument
from mlops.events.v1 import common_pb2, training_pb2
from services.trainer.intake import JobIntake


class _Untouchable:
    def __getattr__(self, name):
        raise AssertionError(f"{name} used for a request that should have been refused")


async def test_an_unknown_trigger_is_refused_naming_it():
    intake = JobIntake(registry=_Untouchable(), outbox=_Untouchable(), jobs=_Untouchable())
    event = training_pb2.RetrainRequested(model="wine", trigger=99)
    with pytest.raises(InvalidArgument) as caught:
        await intake.queue_for_retrain(event, event_id="e1", session=_Untouchable())
    assert "RetrainRequested.trigger 99 is not a TrainingTrigger" in caught.value.message
    assert "TRAINING_TRIGGER_DRIFT" in caught.value.message
    assert not caught.value.retryable, "a permanent refusal goes straight to the dead-letter topic"
    assert common_pb2.TRAINING_TRIGGER_DRIFT in common_pb2.TrainingTrigger.values()


class _Registry:
    """The registry's answers as the intake reads them: specs by data set, the recorded versions."""

    def __init__(self, specs, versions) -> None:
        self.specs = specs
        self.versions = versions

    async def specs_for_dataset(self, dataset: str):
        return [s for s in self.specs if s.spec.spec.dataset == dataset]

    async def dataset_version(self, dataset: str, version: int = 0):
        from mlops.errors import NotFound

        if (dataset, version) not in self.versions:
            raise NotFound(f"data set {dataset!r} has no version {version}")
        return self.versions[(dataset, version)]


class _Jobs:
    def __init__(self) -> None:
        self.queued: list[tuple[str, int, int, str]] = []

    async def enqueue(self, session, *, spec, dataset, trigger, trigger_event_id, trace_context):
        key = (spec.model, dataset.version, trigger, trigger_event_id)
        if any(q[:2] == key[:2] for q in self.queued):
            return None
        self.queued.append(key)
        return f"job-{len(self.queued)}"


def _spec(model: str, dataset: str):
    from mlops.registry.v1 import registry_pb2 as pb

    spec = pb.ModelSpecVersion(model=model, version=1)
    spec.spec.spec.dataset = dataset
    return spec


def _recorded(sha: str = "a" * 64, **intent):
    from mlops.events.v1 import data_pb2

    event = data_pb2.DatasetVersionRecorded(dataset="wine", version=3, sha256=sha, source_event_id="commit-1")
    if intent:
        event.retrain.CopyFrom(data_pb2.RetrainIntent(**intent))
    return event


def _intake(jobs: _Jobs):
    from mlops.registry.v1 import registry_pb2 as pb

    held = pb.DatasetVersion(dataset="wine", version=3, sha256="a" * 64, source_event_id="commit-1")
    registry = _Registry(
        [_spec("red", "wine"), _spec("white", "wine"), _spec("beer", "hops")], {("wine", 3): held}
    )
    return JobIntake(registry=registry, outbox=_Untouchable(), jobs=jobs)


async def test_a_recorded_version_queues_each_spec_on_it_once_answering_to_the_commit():
    jobs = _Jobs()
    queued = await _intake(jobs).queue_for_recorded(_recorded(), event_id="recorded-1", session=None)
    assert queued == ["job-1", "job-2"]
    assert jobs.queued == [
        ("red", 3, common_pb2.TRAINING_TRIGGER_DATA_COMMITTED, "commit-1"),
        ("white", 3, common_pb2.TRAINING_TRIGGER_DATA_COMMITTED, "commit-1"),
    ]
    # a replay under another id queues nothing new (the queue is unique per spec and version)
    again = await _intake(jobs).queue_for_recorded(_recorded(), event_id="recorded-2", session=None)
    assert again == [] and len(jobs.queued) == 2


async def test_data_committed_to_retrain_one_model_trains_that_model_with_the_intents_trigger():
    jobs = _Jobs()
    event = _recorded(model="white", trigger=common_pb2.TRAINING_TRIGGER_DRIFT, cause_event_id="drift-9")
    await _intake(jobs).queue_for_recorded(event, event_id="recorded-1", session=None)
    assert dict((model, trigger) for model, _, trigger, _ in jobs.queued) == {
        "red": common_pb2.TRAINING_TRIGGER_DATA_COMMITTED,
        "white": common_pb2.TRAINING_TRIGGER_DRIFT,
    }


async def test_a_record_the_registry_does_not_hold_is_refused_before_anything_is_queued():
    from mlops.errors import IntegrityError

    jobs = _Jobs()
    with pytest.raises(IntegrityError) as caught:
        await _intake(jobs).queue_for_recorded(_recorded(sha="b" * 64), event_id="r", session=None)
    assert "the registry holds " + "a" * 64 in caught.value.message
    assert jobs.queued == []


async def test_an_intent_with_an_unknown_trigger_is_refused_naming_the_field():
    jobs = _Jobs()
    with pytest.raises(InvalidArgument) as caught:
        await _intake(jobs).queue_for_recorded(_recorded(model="red", trigger=42), event_id="r", session=None)
    assert "DatasetVersionRecorded.retrain.trigger 42" in caught.value.message
    assert jobs.queued == []


async def test_a_model_trained_outside_the_platform_is_left_alone():
    jobs = _Jobs()
    intake = _intake(jobs)
    intake.registry.specs[1].spec.spec.training.external = True  # "white" is registered from outside
    queued = await intake.queue_for_recorded(_recorded(), event_id="recorded-1", session=None)
    assert len(queued) == 1 and [model for model, *_ in jobs.queued] == ["red"]


async def test_a_record_the_registry_does_not_hold_or_without_a_version_is_refused():
    from mlops.errors import NotFound

    jobs = _Jobs()
    ghost = _recorded()
    ghost.dataset = "ghost"
    with pytest.raises(NotFound) as caught:
        await _intake(jobs).queue_for_recorded(ghost, event_id="r", session=None)
    assert "names a version the registry does not hold" in caught.value.message
    versionless = _recorded()
    versionless.version = 0
    with pytest.raises(InvalidArgument) as refused:
        await _intake(jobs).queue_for_recorded(versionless, event_id="r", session=None)
    assert "a version from 1" in refused.value.message
    huge = _recorded()
    huge.dataset = "h" * 900_000
    with pytest.raises(InvalidArgument):
        await _intake(jobs).queue_for_recorded(huge, event_id="r", session=None)
    assert jobs.queued == []
