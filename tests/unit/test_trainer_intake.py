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
