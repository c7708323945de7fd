"""What an alarm asks for when the platform does not train the model.

A spec with `training: {external: true}` names a model trained elsewhere and registered: nothing
here can retrain it. Where the spec's policy (`on_drift`, `on_degradation`) says "retrain", its
alarm asks for a new model instead: no data is assembled, no `DataCommitted` or `RetrainRequested`
is written; the version's state records when and why (`GetDriftStatus`, `mlops drift status`), and
the alarm's event says so. "alert" and "none" mean what they mean for any model.
"""

from __future__ import annotations

from google.protobuf.timestamp_pb2 import Timestamp

from mlops.monitor.v1 import monitor_pb2
from mlops.registry.v1 import registry_pb2 as pb


def trained_elsewhere(spec: pb.ModelSpecVersion | None) -> bool:
    """True when the model's spec says its versions are trained outside the platform."""
    return spec is not None and spec.spec.spec.training.external


def asks_for_new_model(spec: pb.ModelSpecVersion | None, policy: str) -> bool:
    """True when an alarm under `policy` ("retrain", "alert", "none") asks for a new model."""
    return policy == "retrain" and trained_elsewhere(spec)


def new_model_reason(model: str, what: str) -> str:
    """Why a new model is asked for, as an operator reads it."""
    return (
        f"{what}; {model} is trained outside the platform (spec.training.external): "
        "train a new model on recent data and register it"
    )


def show_new_model(item: monitor_pb2.VersionDrift, at: Timestamp, reason: str) -> None:
    """Put a version's last request for a new model in its drift status."""
    item.new_model_needed_at.CopyFrom(at)
    item.new_model_reason = reason
