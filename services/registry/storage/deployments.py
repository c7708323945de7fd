"""Deployments the deployer reports, and the monitor's drift and degradation events, kept for lineage."""

from __future__ import annotations

from datetime import datetime

from google.protobuf.message import Message
from sqlmodel.ext.asyncio.session import AsyncSession

from mlops.registry.v1 import registry_pb2 as pb
from services.registry.common import Page, Where
from services.registry.storage import page_of, q


async def upsert_deployment(
    session: AsyncSession, *, deployment: pb.Deployment, started_at: datetime
) -> bool:
    """Store the rollout's latest state: True when it is the first report of it."""
    created = (
        await session.exec(
            q(
                "INSERT INTO {s}.deployments (rollout_id, model, version, state, started_at, body) "
                "VALUES (:r, :m, :v, :st, :t, :b) ON CONFLICT (rollout_id) DO UPDATE SET state = EXCLUDED.state, "
                "body = EXCLUDED.body RETURNING (xmax = 0)"
            ),
            params={
                "r": deployment.rollout_id,
                "m": deployment.model,
                "v": deployment.version,
                "st": deployment.state,
                "t": started_at,
                "b": deployment.SerializeToString(),
            },
        )
    ).scalar_one()
    return bool(created)


async def list_deployments(
    session: AsyncSession, *, request: pb.ListDeploymentsRequest, page: Page
) -> tuple[list[pb.Deployment], str]:
    """Deployments matching the request's filters, the latest started first."""
    where = Where(model=request.model, version=request.version, state=request.state).between(
        "started_at", request, "started_after", "started_before"
    )
    return await page_of(
        session, cls=pb.Deployment, table="deployments", where=where, order="started_at DESC", page=page
    )


async def insert_monitor_event(
    session: AsyncSession, *, event_id: str, kind: str, event: Message, detected_at: datetime
) -> None:
    """Keep a monitor event once under its event id (a redelivery changes nothing)."""
    await session.exec(
        q(
            "INSERT INTO {s}.monitor_events (event_id, kind, model, version, detected_at, body) "
            "VALUES (:e, :k, :m, :v, :t, :b) ON CONFLICT DO NOTHING"
        ),
        params={
            "e": event_id,
            "k": kind,
            "m": event.model,
            "v": event.version,
            "t": detected_at,
            "b": event.SerializeToString(),
        },
    )


async def monitor_events_of(session: AsyncSession, *, model: str, version: int) -> list[tuple[str, bytes]]:
    """(kind, stored event) of every monitor event about a version, the latest detected first."""
    rows = (
        await session.exec(
            q(
                "SELECT kind, body FROM {s}.monitor_events WHERE model = :m AND version = :v "
                "ORDER BY detected_at DESC"
            ),
            params={"m": model, "v": version},
        )
    ).all()
    return [(kind, body) for kind, body in rows]
