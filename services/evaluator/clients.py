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
