"""The registry as the trainer uses it: typed calls over gRPC, failures re-raised as typed errors."""

from __future__ import annotations

from mlops.grpc import raise_typed
from mlops.grpc.registry import RegistryPeer
from mlops.registry.v1 import registry_pb2 as pb


class RegistryClient(RegistryPeer):
    async def specs_for_dataset(self, dataset: str) -> list[pb.ModelSpecVersion]:
        """The latest spec of every model that trains on `dataset`."""
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
