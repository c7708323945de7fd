"""The event catalog read from the proto options: names, keys, types follow DESIGN.md."""

from __future__ import annotations

import re

from mlops.event_catalog import all_events

EXPECTED = {
    "DataCommitted",
    "TrainingStarted",
    "ModelTrained",
    "TrainingFailed",
    "ModelEvaluated",
    "ModelRegistered",
    "AliasChanged",
    "ModelDeployed",
    "RolloutProgressed",
    "ModelRolledBack",
    "InferenceLogged",
    "GroundTruthLogged",
    "DriftDetected",
    "PerformanceDegraded",
    "RetrainRequested",
    "DesiredState",
}


def test_every_event_of_the_design_is_in_the_catalog():
    names = {spec.message.__name__ for spec in all_events()}
    assert EXPECTED <= names, EXPECTED - names


def test_topics_types_and_keys_follow_the_conventions():
    topics = set()
    for spec in all_events():
        assert re.fullmatch(r"mlops\.[a-z]+\.[a-z_]+", spec.topic), spec.topic
        assert spec.ce_type == f"{spec.topic}.v1", spec
        field = spec.message.DESCRIPTOR.fields_by_name.get(spec.key_field)
        assert field is not None and field.type == field.TYPE_STRING, spec
        assert spec.topic not in topics, f"two events share {spec.topic}"
        topics.add(spec.topic)


def test_only_the_desired_state_is_compacted():
    assert [spec.topic for spec in all_events() if spec.compacted] == ["mlops.deployments.desired"]
