"""A commit that states a retrain carries its intent into the recorded version, checked first."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from mlops.errors import InvalidArgument
from mlops.events.v1 import common_pb2, data_pb2
from services.registry.common import same_fields
from services.registry.core.datasets import check_record_request, commit_request, new_version


def _commit(**intent) -> data_pb2.DataCommitted:
    event = data_pb2.DataCommitted(
        dataset="wine", uri="s3://mlops/datasets/wine/x.csv", sha256="a" * 64, format="csv"
    )
    if intent:
        event.retrain.CopyFrom(data_pb2.RetrainIntent(**intent))
    return event


def _recorded(event: data_pb2.DataCommitted) -> data_pb2.DatasetVersionRecorded:
    request = commit_request(event, source="mlops-monitor", event_id="commit-1")
    check_record_request(request)
    record = new_version(
        request, version=4, parent_version=3, parent_sha256="b" * 64, recorded_at=datetime.now(UTC)
    )
    return same_fields(record, data_pb2.DatasetVersionRecorded)


def test_the_intent_reaches_the_recorded_event_whole():
    event = _commit(
        model="wine-quality",
        model_version=2,
        trigger=common_pb2.TRAINING_TRIGGER_DRIFT,
        reason="psi drift for 2 windows",
        cause_event_id="drift-1",
        requested_by="mlops-monitor",
    )
    recorded = _recorded(event)
    assert recorded.retrain == event.retrain
    assert recorded.source_event_id == "commit-1" and recorded.committed_by == "mlops-monitor"


def test_an_ordinary_commit_states_no_intent():
    assert not _recorded(_commit()).HasField("retrain")


@pytest.mark.parametrize(
    ("intent", "says"),
    [
        ({"trigger": common_pb2.TRAINING_TRIGGER_DRIFT}, "retrain.model is required"),
        ({"model": "m", "trigger": 77}, "retrain.trigger 77 is not a TrainingTrigger"),
    ],
)
def test_a_malformed_intent_is_refused_naming_the_field(intent, says):
    request = commit_request(_commit(**intent), source="x", event_id="e")
    with pytest.raises(InvalidArgument) as caught:
        check_record_request(request)
    assert says in caught.value.message
