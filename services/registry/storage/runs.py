"""Training runs and the metrics of each of their epochs."""

from __future__ import annotations

from datetime import datetime

from sqlmodel.ext.asyncio.session import AsyncSession

from mlops.registry.v1 import registry_pb2 as pb
from services.registry.common import Page, Where, parse
from services.registry.storage import page_of, q


async def insert_run(session: AsyncSession, *, run: pb.Run, started_at: datetime) -> bool:
    """Store a new run; False when a run with its id exists already (left as it is)."""
    inserted = (
        await session.exec(
            q(
                "INSERT INTO {s}.runs (run_id, model, status, dataset, dataset_version, started_at, body) "
                "VALUES (:r, :m, :st, :d, :dv, :t, :b) ON CONFLICT (run_id) DO NOTHING RETURNING run_id"
            ),
            params={
                "r": run.run_id,
                "m": run.model,
                "st": run.status,
                "d": run.dataset,
                "dv": run.dataset_version,
                "t": started_at,
                "b": run.SerializeToString(),
            },
        )
    ).scalar_one_or_none()
    return inserted is not None


async def run_for_update(session: AsyncSession, *, run_id: str) -> pb.Run | None:
    body = (
        await session.exec(q("SELECT body FROM {s}.runs WHERE run_id = :r FOR UPDATE"), params={"r": run_id})
    ).scalar_one_or_none()
    return None if body is None else parse(pb.Run, body)


async def update_run(session: AsyncSession, *, run: pb.Run) -> None:
    await session.exec(
        q("UPDATE {s}.runs SET status = :st, body = :b WHERE run_id = :r"),
        params={"st": run.status, "b": run.SerializeToString(), "r": run.run_id},
    )


async def upsert_epoch(session: AsyncSession, *, run_id: str, epoch: pb.EpochMetrics) -> None:
    """Keep an epoch's metrics; a repeated epoch replaces the one logged before."""
    await session.exec(
        q(
            "INSERT INTO {s}.run_epochs (run_id, epoch, body) VALUES (:r, :e, :b) "
            "ON CONFLICT (run_id, epoch) DO UPDATE SET body = EXCLUDED.body"
        ),
        params={"r": run_id, "e": epoch.epoch, "b": epoch.SerializeToString()},
    )


async def run_by_id(session: AsyncSession, *, run_id: str) -> pb.Run | None:
    body = (
        await session.exec(q("SELECT body FROM {s}.runs WHERE run_id = :r"), params={"r": run_id})
    ).scalar_one_or_none()
    return None if body is None else parse(pb.Run, body)


async def epochs_of(session: AsyncSession, *, run_id: str) -> list[pb.EpochMetrics]:
    bodies = (
        (
            await session.exec(
                q("SELECT body FROM {s}.run_epochs WHERE run_id = :r ORDER BY epoch"), params={"r": run_id}
            )
        )
        .scalars()
        .all()
    )
    return [parse(pb.EpochMetrics, b) for b in bodies]


async def list_runs(
    session: AsyncSession, *, request: pb.ListRunsRequest, page: Page
) -> tuple[list[pb.Run], str]:
    """Runs matching the request's filters, the latest started first."""
    where = Where(
        model=request.model,
        dataset=request.dataset,
        dataset_version=request.dataset_version,
        status=request.status,
    ).between("started_at", request, "started_after", "started_before")
    return await page_of(session, cls=pb.Run, table="runs", where=where, order="started_at DESC", page=page)
