"""What happened to a version once it left the registry: the deployer's rollouts, and the monitor's
drift and degradation events about it."""

from __future__ import annotations

from google.protobuf.message import Message
from sqlmodel.ext.asyncio.session import AsyncSession

from mlops.db import Database
from mlops.errors import NotFound
from mlops.events.v1 import monitoring_pb2
from mlops.registry.v1 import registry_pb2 as pb
from services.registry.common import Page, check_model_name, moment, need, now, parse
from services.registry.settings import RegistrySettings
from services.registry.storage import deployments as storage
from services.registry.storage import versions

MonitorEvent = monitoring_pb2.DriftDetected | monitoring_pb2.PerformanceDegraded


def check_deployment(deployment: pb.Deployment) -> None:
    need(bool(deployment.rollout_id), "deployment.rollout_id is required")
    check_model_name(deployment.model)


def monitor_kind(event: Message) -> str:
    return "drift" if isinstance(event, monitoring_pb2.DriftDetected) else "degradation"


def monitor_event(kind: str, body: bytes) -> MonitorEvent:
    """A stored monitor event as the message it was, by the kind it was stored under."""
    if kind == "drift":
        return parse(monitoring_pb2.DriftDetected, body)
    return parse(monitoring_pb2.PerformanceDegraded, body)


class Deployments:
    def __init__(self, database: Database, settings: RegistrySettings) -> None:
        self.database = database
        self.settings = settings

    async def record_deployment(self, request: pb.RecordDeploymentRequest) -> pb.RecordDeploymentResponse:
        deployment = request.deployment
        check_deployment(deployment)
        started_at = moment(deployment.started_at, now())
        async with self.database.transaction() as tx:
            created = await storage.upsert_deployment(tx, deployment=deployment, started_at=started_at)
        return pb.RecordDeploymentResponse(deployment=deployment, created=created)

    async def list_deployments(self, request: pb.ListDeploymentsRequest) -> pb.ListDeploymentsResponse:
        page = Page(request.page_size, request.page_token, self.settings)
        async with self.database.session() as session:
            deployments, token = await storage.list_deployments(session, request=request, page=page)
        return pb.ListDeploymentsResponse(deployments=deployments, next_page_token=token)

    async def record_monitor_event(self, event_id: str, event: MonitorEvent, session: AsyncSession) -> None:
        """Keep a DriftDetected or PerformanceDegraded event for the version's lineage (idempotent)."""
        # A lineage entry for a version the registry never made would be a fact with nothing to hang on:
        # refused (dead-lettered with the reason), not kept.
        if not await versions.version_exists(session, model=event.model, version=event.version):
            raise NotFound(
                f"{type(event).__name__} names {event.model}@{event.version}, which the registry does not hold"
            )
        await storage.insert_monitor_event(
            session,
            event_id=event_id,
            kind=monitor_kind(event),
            event=event,
            detected_at=moment(event.detected_at, now()),
        )

    async def monitor_events_of(self, model: str, version: int) -> list[MonitorEvent]:
        """Every monitor event about a version, the latest detected first (for its lineage)."""
        async with self.database.session() as session:
            rows = await storage.monitor_events_of(session, model=model, version=version)
        return [monitor_event(kind, body) for kind, body in rows]
