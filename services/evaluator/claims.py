"""What the evaluator believes of a `ModelTrained`: only what the registry, the system of record, holds.

Anyone who can write the topic can announce a version; the version's artifact, its signature and the data
it was trained on are read from the registry's record, never from the event. An event that names a version
the registry does not hold, or that disagrees with the registry's record of it, is refused with the reason
(FailedPrecondition: the event goes to `mlops.model.trained.dlq`); an unreachable registry is an outage the
consumer waits out.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mlops.errors import FailedPrecondition, NotFound
from mlops.events.v1 import training_pb2
from mlops.registry.v1 import registry_pb2 as pb

if TYPE_CHECKING:  # a gRPC client, passed in by the caller
    from mlops.grpc.registry import RegistryPeer


async def registered_version(registry: RegistryPeer, trained: training_pb2.ModelTrained) -> pb.ModelVersion:
    """The registry's record of the version `trained` announces, once the event agrees with it."""
    subject = f"ModelTrained of {trained.model} v{trained.version}"
    try:
        version = await registry.model_version(trained.model, trained.version)
    except NotFound:
        raise FailedPrecondition(
            f"{subject} names a version the registry does not hold; only registered versions are evaluated"
        ) from None
    # An empty field in the event claims nothing; a field the registry left empty has nothing to contradict.
    claims = [
        ("artifact_uri", trained.artifact_uri, version.artifact_uri),
        ("artifact_sha256", trained.artifact_sha256, version.artifact_sha256),
        ("dataset", trained.dataset, version.dataset),
        ("dataset_version", trained.dataset_version, version.dataset_version),
        ("dataset_sha256", trained.dataset_sha256, version.dataset_sha256),
        ("spec_version", trained.spec_version, version.spec_version),
    ]
    differ = [
        f"{name} {claimed!r} (the registry holds {held!r})"
        for name, claimed, held in claims
        if claimed and held and claimed != held
    ]
    if differ:
        raise FailedPrecondition(f"{subject} disagrees with the registry's record: " + "; ".join(differ))
    return version
