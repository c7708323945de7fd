"""People asking for a model to be retrained: the request is checked here and stated as an intent.

The registry trains nothing and queues nothing: it checks that the model has a spec and that the
data set version exists, then writes `RetrainRequested` to its outbox. The trainer turns it into a
job; a job is unique per (spec version, data set version), so asking twice trains once.
"""

from __future__ import annotations

from google.protobuf.timestamp_pb2 import Timestamp

from mlops.errors import InvalidArgument
from mlops.events.v1 import common_pb2, training_pb2
from mlops.registry.v1 import registry_pb2 as pb
from services.registry.core import RegistryCore


async def request_retrain(core: RegistryCore, request: pb.RequestRetrainRequest) -> pb.RequestRetrainResponse:
    """State a manual retrain of `request.model` on a checked data set version; returns the event's id."""
    if not request.model:
        raise InvalidArgument("model is required: the name of a model with a spec")
    if request.dataset_version < 0:
        raise InvalidArgument(
            f"dataset_version must be 0 (the latest) or a version, got {request.dataset_version}"
        )
    spec = await core.get_model_spec(pb.GetModelSpecRequest(model=request.model))
    trains_on = spec.spec.dataset
    if request.dataset and request.dataset != trains_on:
        raise InvalidArgument(
            f"model {request.model!r} trains on data set {trains_on!r}, not {request.dataset!r}; "
            f"name a version of {trains_on!r} or apply a spec that trains on {request.dataset!r}"
        )
    lookup = pb.GetDatasetVersionRequest(dataset=trains_on)
    if request.dataset_version:
        lookup.version = request.dataset_version
    dataset = await core.get_dataset_version(lookup)
    requested_at = Timestamp()
    requested_at.GetCurrentTime()
    event = training_pb2.RetrainRequested(
        model=request.model,
        trigger=common_pb2.TRAINING_TRIGGER_MANUAL,
        reason=request.reason or f"asked for by {request.requested_by or 'a person'}",
        dataset_version=dataset.version,
        requested_by=request.requested_by,
        requested_at=requested_at,
    )
    async with core.database.transaction() as tx:
        event_id = await core.outbox.add(tx, event)
    return pb.RequestRetrainResponse(
        event_id=event_id,
        model=request.model,
        spec_version=spec.version,
        dataset=dataset.dataset,
        dataset_version=dataset.version,
        requested_by=request.requested_by,
    )
