"""The registry as the trainer uses it: typed calls over gRPC, failures re-raised as typed errors."""

from __future__ import annotations

from mlops.grpc import raise_typed
from mlops.grpc.registry import RegistryPeer
from mlops.registry.v1 import registry_pb2 as pb


class RegistryClient(RegistryPeer):
    async def create_run(self, request: pb.CreateRunRequest) -> pb.Run:
        with raise_typed():
            return await self.stub.CreateRun(request, timeout=self.timeout_s)

    async def log_run_metrics(self, request: pb.LogRunMetricsRequest) -> pb.LogRunMetricsResponse:
        with raise_typed():
            return await self.stub.LogRunMetrics(request, timeout=self.timeout_s)

    async def finish_run(self, request: pb.FinishRunRequest) -> pb.Run:
        with raise_typed():
            return await self.stub.FinishRun(request, timeout=self.timeout_s)

    async def register_model_version(
        self, request: pb.RegisterModelVersionRequest
    ) -> pb.RegisterModelVersionResponse:
        with raise_typed():
            return await self.stub.RegisterModelVersion(request, timeout=self.timeout_s)
