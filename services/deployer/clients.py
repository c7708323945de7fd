"""The deployer's peers over gRPC: the registry (specs, versions, aliases, deployment records) and the
monitor (live health). Failures come back as the platform's typed errors."""

from __future__ import annotations

import grpc

from mlops.errors import FailedPrecondition
from mlops.grpc import raise_typed
from mlops.grpc.registry import RegistryPeer
from mlops.monitor.v1 import monitor_pb2, monitor_pb2_grpc
from mlops.registry.v1 import registry_pb2 as pb


class RegistryClient(RegistryPeer):
    async def move_alias(
        self, model: str, alias: str, version: int, *, expected: int | None, actor: str, reason: str
    ) -> bool:
        """Point `alias` at `version` with compare-and-set against `expected` (None: unconditionally).

        A repeated move (the alias already points to `version`, e.g. after a restart between the move
        and its record) is not an error; another version there is FailedPrecondition. True if it moved.
        """
        request = pb.SetAliasRequest(model=model, alias=alias, version=version, actor=actor, reason=reason)
        if expected is not None:
            request.expected_version = expected
        try:
            with raise_typed():
                reply = await self.stub.SetAlias(request, timeout=self.timeout_s)
        except FailedPrecondition:
            now = await self.aliased_version(model, alias)
            if now is not None and now.version == version:
                return False
            raise
        return reply.changed

    async def remove_alias(self, model: str, alias: str, *, expected: int, actor: str, reason: str) -> bool:
        """Delete `alias` if it still points to `expected`; leave it alone if someone moved it since."""
        request = pb.DeleteAliasRequest(
            model=model, alias=alias, actor=actor, reason=reason, expected_version=expected
        )
        try:
            with raise_typed():
                reply = await self.stub.DeleteAlias(request, timeout=self.timeout_s)
        except FailedPrecondition:
            return False
        return reply.deleted

    async def previous_production(self, model: str, alias: str, current: int) -> int:
        """The version `alias` pointed to before it was last moved to `current`; 0 if none."""
        with raise_typed():
            reply = await self.stub.GetAliasHistory(
                pb.GetAliasHistoryRequest(model=model, alias=alias, page_size=100), timeout=self.timeout_s
            )
        for change in reply.changes:
            if change.to_version == current and change.from_version:
                return change.from_version
        return 0

    async def record_deployment(self, deployment: pb.Deployment) -> None:
        with raise_typed():
            await self.stub.RecordDeployment(
                pb.RecordDeploymentRequest(deployment=deployment), timeout=self.timeout_s
            )


class MonitorClient:
    def __init__(self, channel: grpc.aio.Channel, *, timeout_s: float = 2.0) -> None:
        self.stub = monitor_pb2_grpc.MonitorStub(channel)
        self.timeout_s = timeout_s

    async def health(
        self, model: str, version: int, *, window_seconds: int, baseline_version: int
    ) -> monitor_pb2.GetHealthResponse:
        """`Monitor.GetHealth` with the deployer's deadline; any failure raises its typed error."""
        request = monitor_pb2.GetHealthRequest(
            model=model, version=version, window_seconds=window_seconds, baseline_version=baseline_version
        )
        with raise_typed():
            return await self.stub.GetHealth(request, timeout=self.timeout_s)
