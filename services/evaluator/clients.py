"""The registry as the evaluator uses it: a few calls over gRPC, failures re-raised as typed errors."""

from __future__ import annotations

from mlops.grpc import raise_typed
from mlops.grpc.registry import RegistryPeer
from mlops.registry.v1 import registry_pb2 as pb


class RegistryClient(RegistryPeer):
    async def record_evaluation(self, evaluation: pb.Evaluation) -> pb.RecordEvaluationResponse:
        with raise_typed():
            return await self.stub.RecordEvaluation(
                pb.RecordEvaluationRequest(evaluation=evaluation), timeout=self.timeout_s
            )

    async def specs_for_dataset(self, dataset: str) -> list[pb.ModelSpecVersion]:
        """The latest spec of every model judged on `dataset`."""
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
