"""The registry as the evaluator uses it: a few calls over gRPC, failures re-raised as typed errors."""

from __future__ import annotations

import grpc

from mlops.errors import NotFound
from mlops.grpc import raise_typed
from mlops.registry.v1 import registry_pb2 as pb
from mlops.registry.v1 import registry_pb2_grpc


class RegistryClient:
    def __init__(self, channel: grpc.aio.Channel, *, timeout_s: float = 30.0) -> None:
        self.stub = registry_pb2_grpc.RegistryStub(channel)
        self.timeout_s = timeout_s

    async def model_spec(self, model: str, version: int) -> pb.ModelSpecVersion:
        with raise_typed():
            return await self.stub.GetModelSpec(
                pb.GetModelSpecRequest(model=model, version=version), timeout=self.timeout_s
            )

    async def dataset_version(self, dataset: str, version: int) -> pb.DatasetVersion:
        with raise_typed():
            return await self.stub.GetDatasetVersion(
                pb.GetDatasetVersionRequest(dataset=dataset, version=version), timeout=self.timeout_s
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

    async def record_evaluation(self, evaluation: pb.Evaluation) -> pb.RecordEvaluationResponse:
        with raise_typed():
            return await self.stub.RecordEvaluation(
                pb.RecordEvaluationRequest(evaluation=evaluation), timeout=self.timeout_s
            )
