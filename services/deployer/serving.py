"""Small pure helpers shared by the deployer's modules: timestamps, state names, serving versions
from registry versions, and the spec's rollout settings with their defaults."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp
from opentelemetry import trace

from mlops.errors import InvalidArgument
from mlops.events.v1 import common_pb2, deployment_pb2, evaluation_pb2
from mlops.registry.v1 import registry_pb2 as pb
from services.deployer import policy

log = logging.getLogger(__name__)
tracer = trace.get_tracer("mlops.deployer")

S = deployment_pb2
STATE_NAMES = [name.removeprefix("ROLLOUT_STATE_") for name in S.RolloutState.keys()[1:]]


def now_ts() -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(datetime.now(UTC))
    return stamp


def state_name(state: int) -> str:
    return S.RolloutState.Name(state).removeprefix("ROLLOUT_STATE_")


def serving_version(version: pb.ModelVersion) -> S.ServingVersion:
    return S.ServingVersion(
        version=version.version,
        artifact_uri=version.artifact_uri,
        artifact_sha256=version.artifact_sha256,
        task=version.signature.task,
        feature_names=version.signature.feature_names,
        class_labels=version.signature.class_labels,
    )


def production_of(desired: S.DesiredState | None) -> S.ServingVersion | None:
    if desired is None:
        return None
    for version in desired.versions:
        if version.role == common_pb2.SERVING_ROLE_PRODUCTION:
            return version
    return None


def prediction_drift_bound(body: pb.ModelSpecBody, default: float) -> float:
    """The spec's `rollout.max_prediction_drift` when set, else the deployer's default (0 by default:
    the drift is reported with each step but decides nothing, since a retrained model is meant to
    answer differently from the champion it replaces)."""
    if body.rollout.HasField("max_prediction_drift"):
        return body.rollout.max_prediction_drift
    return default


def health_timeout_of(body: pb.ModelSpecBody) -> tuple[int, str]:
    """The spec's health timeout and what to do when it passes; the registry fills both, and a spec
    stored before they existed gets the same defaults."""
    rollout = body.rollout
    seconds = (
        rollout.health_timeout_seconds
        if rollout.HasField("health_timeout_seconds")
        else policy.DEFAULT_HEALTH_TIMEOUT_S
    )
    return seconds, rollout.on_health_timeout or policy.ROLLBACK_ON_TIMEOUT


def check_evaluated(event: evaluation_pb2.ModelEvaluated) -> None:
    problems = []
    if not event.model:
        problems.append("model is empty")
    if event.version <= 0:
        problems.append(f"version must be 1 or more, got {event.version}")
    if problems:
        raise InvalidArgument("ModelEvaluated cannot be rolled out: " + "; ".join(problems))


def _by(done: str, actor: str, reason: str) -> str:
    """What a person did to a rollout, for its ledger: "paused by alice: load test"."""
    return f"{done} by {actor}" + (f": {reason}" if reason else "")
