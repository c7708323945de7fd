"""What the deployer believes of a `ModelEvaluated` before it rolls anything out: only what the registry,
the system of record, confirms. Anyone who can write the topic can claim that a version passed; the
registry holds the evaluations the evaluator recorded, and the version's artifact.

A claim the registry contradicts is a permanent error (FailedPrecondition, NotFound) that names the
problem, so the event goes to `mlops.model.evaluated.dlq` with the reason; an unreachable registry is
an outage the consumer waits out.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mlops.errors import FailedPrecondition, NotFound
from mlops.events.v1 import evaluation_pb2
from mlops.registry.v1 import registry_pb2 as pb

if TYPE_CHECKING:  # a gRPC client, passed in by the caller
    from mlops.grpc.registry import RegistryPeer


async def confirmed_evaluation(
    registry: RegistryPeer, event: evaluation_pb2.ModelEvaluated
) -> tuple[pb.Evaluation, pb.ModelVersion]:
    """The registry's record of the passed evaluation `event` names, and of the version it passed."""
    subject = f"ModelEvaluated of {event.model} v{event.version}"
    if not event.evaluation_id:
        raise FailedPrecondition(
            f"{subject} claims a pass but names no evaluation the registry could confirm"
        )
    named = f"ModelEvaluated names evaluation {event.evaluation_id}"
    try:
        evaluation = await registry.evaluation(event.evaluation_id)
    except NotFound:
        raise FailedPrecondition(f"{named}, which the registry does not hold") from None
    if (evaluation.model, evaluation.version) != (event.model, event.version):
        raise FailedPrecondition(
            f"{named} for {event.model} v{event.version}, which the registry holds for "
            f"{evaluation.model} v{evaluation.version}"
        )
    if not evaluation.passed:
        failed = ", ".join(g.gate for g in evaluation.gates if not g.passed) or "no gate passed"
        raise FailedPrecondition(f"{named}, which the registry holds as failed ({failed})")
    try:
        version = await registry.model_version(event.model, event.version)
    except NotFound:
        raise FailedPrecondition(
            f"{subject}: the registry holds no version {event.version} of {event.model!r}"
        ) from None
    if event.artifact_sha256 and event.artifact_sha256 != version.artifact_sha256:
        raise FailedPrecondition(
            f"{subject} names artifact sha256 {event.artifact_sha256}, but the registry holds "
            f"{version.artifact_sha256} for that version"
        )
    return evaluation, version
