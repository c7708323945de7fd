"""Every consumer refuses an event whose content can never be handled, naming the field at fault."""

from __future__ import annotations

import pytest

from mlops.event_checks import EventCheckFailed, check_event
from mlops.events.v1 import data_pb2, evaluation_pb2, monitoring_pb2, training_pb2


def refusal(event, **options) -> str:
    with pytest.raises(EventCheckFailed) as caught:
        check_event(event, **options)
    return caught.value.message


def test_a_sound_event_passes():
    event = data_pb2.DataCommitted(dataset="wine", uri="s3://b/k.csv", sha256="a" * 64, format="csv")
    event.committed_at.FromSeconds(1_700_000_000)
    check_event(event, key_field="dataset")


def test_a_timestamp_past_the_year_9999_is_refused_by_its_path():
    event = monitoring_pb2.InferenceLogged(model="m")
    event.records.add(request_id="r").timestamp.seconds = 10**12
    assert (
        "records[0].timestamp: 1000000000000 seconds is not a date between the years 1 and 9999"
        in refusal(event)
    )


def test_the_key_field_is_required():
    assert "model: is required" in refusal(training_pb2.ModelTrained(version=1), key_field="model")


def test_versions_counts_and_sizes_must_not_be_negative():
    event = training_pb2.ModelTrained(model="m", version=-5, artifact_size_bytes=-1, dataset_version=-2)
    text = refusal(event)
    assert "version: must not be negative, got -5" in text
    assert "artifact_size_bytes: must not be negative" in text
    assert "dataset_version: must not be negative" in text


def test_a_sha256_that_is_not_one_and_a_name_too_long_or_with_control_characters():
    assert "sha256: 'xyz' is not a sha256" in refusal(data_pb2.DataCommitted(dataset="d", sha256="xyz"))
    assert "a name of 300 characters" in refusal(data_pb2.DataCommitted(dataset="d" * 300))
    assert "contains control characters" in refusal(data_pb2.DataCommitted(dataset="a\x00b"))


def test_infinite_metrics_in_maps_and_nested_messages_are_refused_but_nan_is_allowed():
    event = evaluation_pb2.ModelEvaluated(model="m", version=1)
    event.metrics["accuracy"] = float("inf")
    event.metrics["roc_auc"] = float("nan")
    event.gates.add(gate="min", observed=float("-inf"))
    text = refusal(event)
    assert "metrics['accuracy']: must be finite" in text
    assert "gates[0].observed: must be finite" in text
    assert "roc_auc" not in text
