"""gRPC `mlops.monitor.v1.Monitor`: each method hands its request to the core's queries and returns
their reply.

GetHealth reads only in-memory state (and, once per model, the registry to tell an unknown model
from a quiet one), so it answers within the deployer's tick.
"""

from __future__ import annotations

from mlops.monitor.v1 import monitor_pb2_grpc
from services.monitor.core import MonitorCore


class MonitorServicer(monitor_pb2_grpc.MonitorServicer):
    def __init__(self, core: MonitorCore) -> None:
        self.queries = core.queries

    async def GetHealth(self, request, context):
        return await self.queries.get_health(request)

    async def GetModelHealth(self, request, context):
        return await self.queries.get_model_health(request)

    async def GetDriftStatus(self, request, context):
        return await self.queries.get_drift_status(request)
