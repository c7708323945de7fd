"""gRPC side of the deployer: the `Deployer` API, converted and handed to the core."""

from __future__ import annotations

import grpc

from mlops.deployer.v1 import deployer_pb2 as dpb
from mlops.deployer.v1 import deployer_pb2_grpc
from mlops.errors import InvalidArgument
from mlops.events.v1 import deployment_pb2
from mlops.identity import recorded_actor
from services.deployer.core import DeployerCore

SERVICE_NAME = "mlops.deployer.v1.Deployer"


def _actor(request) -> str:
    """The authenticated caller (the `actor` a person typed is not believed); see `recorded_actor`."""
    return recorded_actor(request.actor)


def _model_or_id(request) -> None:
    if not request.model and not request.rollout_id:
        raise InvalidArgument("give a model name or a rollout_id")


class DeployerServicer(deployer_pb2_grpc.DeployerServicer):
    def __init__(self, core: DeployerCore) -> None:
        self.core = core

    def register(self, server: grpc.aio.Server) -> None:
        deployer_pb2_grpc.add_DeployerServicer_to_server(self, server)

    async def GetRollout(self, request: dpb.GetRolloutRequest, context) -> dpb.Rollout:
        _model_or_id(request)
        return await self.core.get_rollout(model=request.model, rollout_id=request.rollout_id)

    async def ListRollouts(self, request: dpb.ListRolloutsRequest, context) -> dpb.ListRolloutsResponse:
        if request.state not in deployment_pb2.RolloutState.values():
            raise InvalidArgument(f"state {request.state} is not a RolloutState")
        return await self.core.list_rollouts(
            model=request.model,
            state=request.state,
            page_size=request.page_size,
            page_token=request.page_token,
        )

    async def StartRollout(self, request: dpb.StartRolloutRequest, context) -> dpb.Rollout:
        return await self.core.start_rollout(
            model=request.model,
            version=request.version,
            strategy=request.strategy,
            actor=_actor(request),
            reason=request.reason,
        )

    async def Promote(self, request: dpb.RolloutActionRequest, context) -> dpb.Rollout:
        _model_or_id(request)
        return await self.core.promote(
            model=request.model, rollout_id=request.rollout_id, actor=_actor(request), reason=request.reason
        )

    async def Rollback(self, request: dpb.RolloutActionRequest, context) -> dpb.Rollout:
        _model_or_id(request)
        return await self.core.rollback(
            model=request.model, rollout_id=request.rollout_id, actor=_actor(request), reason=request.reason
        )

    async def Pause(self, request: dpb.RolloutActionRequest, context) -> dpb.Rollout:
        _model_or_id(request)
        return await self.core.pause(
            model=request.model, rollout_id=request.rollout_id, actor=_actor(request), reason=request.reason
        )

    async def Resume(self, request: dpb.RolloutActionRequest, context) -> dpb.Rollout:
        _model_or_id(request)
        return await self.core.resume(
            model=request.model, rollout_id=request.rollout_id, actor=_actor(request), reason=request.reason
        )

    async def GetDesiredState(
        self, request: dpb.GetDesiredStateRequest, context
    ) -> deployment_pb2.DesiredState:
        return await self.core.get_desired_state(model=request.model)
