"""The registry calls several services make, in one place: a service's own registry client builds on
`RegistryPeer` and adds what only it needs. Failures come back as the platform's typed errors."""

from __future__ import annotations

import grpc

from mlops.errors import NotFound
from mlops.grpc.client import raise_typed
from mlops.registry.v1 import registry_pb2 as pb
from mlops.registry.v1 import registry_pb2_grpc


class RegistryPeer:
    def __init__(self, channel: grpc.aio.Channel, *, timeout_s: float = 30.0) -> None:
        self.stub = registry_pb2_grpc.RegistryStub(channel)
        self.timeout_s = timeout_s

    async def model_spec(self, model: str, version: int = 0) -> pb.ModelSpecVersion:
        """A version of the model's spec; the latest when `version` is 0."""
        with raise_typed():
            return await self.stub.GetModelSpec(
                pb.GetModelSpecRequest(model=model, version=version), timeout=self.timeout_s
            )

    async def model_version(self, model: str, version: int) -> pb.ModelVersion:
        with raise_typed():
            return await self.stub.GetModelVersion(
                pb.GetModelVersionRequest(model=model, version=version), timeout=self.timeout_s
            )

    async def aliased_version(self, model: str, alias: str) -> pb.ModelVersion | None:
        """The version `alias` points to, or None when the alias is not set."""
        try:
            with raise_typed():
                return await self.stub.GetModelVersion(
                    pb.GetModelVersionRequest(model=model, alias=alias), timeout=self.timeout_s
                )
        except NotFound:
            return None

    async def dataset_version(self, dataset: str, version: int = 0) -> pb.DatasetVersion:
        """A version of the data set; the latest when `version` is 0."""
        with raise_typed():
            return await self.stub.GetDatasetVersion(
                pb.GetDatasetVersionRequest(dataset=dataset, version=version), timeout=self.timeout_s
            )

    async def specs_for_dataset(self, dataset: str) -> list[pb.ModelSpecVersion]:
        """The latest spec of every model that trains on, and is judged on, `dataset`."""
        specs, token = [], ""
        while True:
            with raise_typed():
                page = await self.stub.ListModelSpecs(
                    pb.ListModelSpecsRequest(dataset=dataset, page_size=500, page_token=token),
                    timeout=self.timeout_s,
                )
            specs.extend(page.specs)
            token = page.next_page_token
            if not token:
                return specs

    async def evaluation(self, evaluation_id: str) -> pb.Evaluation:
        """The evaluation the registry holds under `evaluation_id`; NotFound when it holds none."""
        with raise_typed():
            return await self.stub.GetEvaluation(
                pb.GetEvaluationRequest(evaluation_id=evaluation_id), timeout=self.timeout_s
            )
