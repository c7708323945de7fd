"""People asking for a model to be retrained: the request is checked here and stated as an intent.

The registry trains nothing and queues nothing: it checks that the model has a spec and that the
data set version exists, then writes `RetrainRequested` to its outbox. The trainer turns it into a
job; a job is unique per (spec version, data set version), so asking twice trains once.
"""

from __future__ import annotations

from google.protobuf.timestamp_pb2 import Timestamp

from mlops.db import Database
from mlops.errors import FailedPrecondition, InvalidArgument
from mlops.events.v1 import common_pb2, training_pb2
from mlops.outbox import Outbox
from mlops.registry.v1 import registry_pb2 as pb
from services.registry.core.datasets import Datasets
from services.registry.core.specs import Specs


def check_retrain(request: pb.RequestRetrainRequest) -> None:
    if not request.model:
        raise InvalidArgument("model is required: the name of a model with a spec")
    if request.dataset_version < 0:
        raise InvalidArgument(
            f"dataset_version must be 0 (the latest) or a version, got {request.dataset_version}"
        )


def check_trained_here(request: pb.RequestRetrainRequest, spec: pb.ModelSpecVersion) -> None:
    """A model whose versions come from outside has nothing the platform could retrain."""
    if spec.spec.spec.training.external:
        raise FailedPrecondition(
            f"model {request.model!r} is trained outside the platform (spec.training.external): "
            "register a new version instead of asking for a retrain"
        )


def check_trains_on(request: pb.RequestRetrainRequest, trains_on: str) -> None:
    """A data set the request names must be the one the model's spec trains on."""
    if request.dataset and request.dataset != trains_on:
        raise InvalidArgument(
            f"model {request.model!r} trains on data set {trains_on!r}, not {request.dataset!r}; "
            f"name a version of {trains_on!r} or apply a spec that trains on {request.dataset!r}"
        )


class Retraining:
    def __init__(self, database: Database, outbox: Outbox, *, specs: Specs, datasets: Datasets) -> None:
        self.database = database
        self.outbox = outbox
        self.specs = specs
        self.datasets = datasets

    async def request_retrain(self, request: pb.RequestRetrainRequest) -> pb.RequestRetrainResponse:
        """State a manual retrain of `request.model` on a checked data set version; returns the event's id."""
        check_retrain(request)
        spec = await self.specs.get_model_spec(pb.GetModelSpecRequest(model=request.model))
        check_trained_here(request, spec)
        trains_on = spec.spec.spec.dataset
        check_trains_on(request, trains_on)
        lookup = pb.GetDatasetVersionRequest(dataset=trains_on)
        if request.dataset_version:
            lookup.version = request.dataset_version
        dataset = await self.datasets.get_dataset_version(lookup)
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
        async with self.database.transaction() as tx:
            event_id = await self.outbox.add(tx, event)
        return pb.RequestRetrainResponse(
            event_id=event_id,
            model=request.model,
            spec_version=spec.version,
            dataset=dataset.dataset,
            dataset_version=dataset.version,
            requested_by=request.requested_by,
        )
