"""Reads and writes of the deployer's own tables, inside the caller's transaction."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from mlops.deployer.v1 import deployer_pb2 as dpb
from mlops.errors import Conflict, InvalidArgument
from mlops.events.v1 import deployment_pb2
from services.deployer.policy import DEFAULT_HEALTH_TIMEOUT_S, ROLLBACK_ON_TIMEOUT
from services.deployer.tables import DesiredStateRow, RolloutRow

RUNNING_STATES = (
    deployment_pb2.ROLLOUT_STATE_PENDING,
    deployment_pb2.ROLLOUT_STATE_SHADOWING,
    deployment_pb2.ROLLOUT_STATE_PROGRESSING,
    deployment_pb2.ROLLOUT_STATE_PAUSED,
)


def moment(stamp) -> datetime:
    return stamp.ToDatetime(tzinfo=UTC)


def health_deadline(stored: StoredRollout) -> datetime | None:
    """When a held step's health timeout passes: the step's time plus the timeout, counted from the
    latest verdict or resume when that came later. None when no timeout runs (a paused rollout, a
    finished one, a spec whose timeout is 0)."""
    r = stored.rollout
    if stored.health_timeout_s <= 0 or not stored.running or r.state == deployment_pb2.ROLLOUT_STATE_PAUSED:
        return None
    silent_since = moment(r.step_started_at) + timedelta(seconds=r.step_seconds)
    if stored.verdict_at is not None and stored.verdict_at > silent_since:
        silent_since = stored.verdict_at
    return silent_since + timedelta(seconds=stored.health_timeout_s)


@dataclass
class StoredRollout:
    """A rollout as the deployer keeps it: the public message and what it needs to act on it."""

    rollout: dpb.Rollout
    candidate: deployment_pb2.ServingVersion
    baseline: deployment_pb2.ServingVersion | None
    batching: deployment_pb2.BatchingConfig
    traceparent: dict[str, str] = field(default_factory=dict)
    hold: str = ""
    revision: int = 0
    recorded_moves: int = 0
    health_timeout_s: int = DEFAULT_HEALTH_TIMEOUT_S
    on_health_timeout: str = ROLLBACK_ON_TIMEOUT
    verdict_at: datetime | None = None
    """The latest health verdict, or a person's resume: the health timeout's clock (see tables)."""

    @property
    def running(self) -> bool:
        return self.rollout.state in RUNNING_STATES

    @property
    def model(self) -> str:
        return self.rollout.model


def _from_row(row: RolloutRow) -> StoredRollout:
    return StoredRollout(
        rollout=dpb.Rollout.FromString(row.body),
        candidate=deployment_pb2.ServingVersion.FromString(row.candidate),
        baseline=deployment_pb2.ServingVersion.FromString(row.baseline) if row.baseline is not None else None,
        batching=deployment_pb2.BatchingConfig.FromString(row.batching),
        traceparent=json.loads(row.traceparent or "{}"),
        hold=row.hold,
        revision=row.revision,
        recorded_moves=row.recorded_moves,
        health_timeout_s=row.health_timeout_seconds,
        on_health_timeout=row.on_health_timeout,
        verdict_at=row.verdict_at,
    )


def _columns(scope: str, stored: StoredRollout) -> dict:
    r = stored.rollout
    return {
        "rollout_id": r.rollout_id,
        "scope": scope,
        "model": r.model,
        "candidate_version": r.candidate_version,
        "baseline_version": r.baseline_version,
        "strategy": r.strategy,
        "state": r.state,
        "evaluation_id": r.evaluation_id,
        "started_at": moment(r.started_at),
        "step_started_at": moment(r.step_started_at),
        "updated_at": moment(r.updated_at),
        "finished_at": moment(r.finished_at) if r.HasField("finished_at") else None,
        "revision": stored.revision,
        "hold": stored.hold,
        "moves": len(r.history),
        "recorded_moves": stored.recorded_moves,
        "health_timeout_seconds": stored.health_timeout_s,
        "on_health_timeout": stored.on_health_timeout,
        "verdict_at": stored.verdict_at,
        "traceparent": json.dumps(stored.traceparent),
        "candidate": stored.candidate.SerializeToString(),
        "baseline": stored.baseline.SerializeToString() if stored.baseline is not None else None,
        "batching": stored.batching.SerializeToString(),
        "body": r.SerializeToString(),
    }


async def insert_rollout(*, session: AsyncSession, scope: str, stored: StoredRollout) -> None:
    stored.revision = 1
    await session.exec(insert(RolloutRow).values(**_columns(scope, stored)))


async def update_rollout(*, session: AsyncSession, scope: str, stored: StoredRollout) -> None:
    """Write the rollout if nobody changed it since it was read (its revision); Conflict otherwise,
    which rolls the caller's transaction back, outbox rows included."""
    seen = stored.revision
    stored.revision = seen + 1
    values = _columns(scope, stored)
    del values["rollout_id"], values["scope"]
    result = await session.exec(
        sa.update(RolloutRow)
        .where(RolloutRow.rollout_id == stored.rollout.rollout_id, RolloutRow.revision == seen)
        .values(**values)
    )
    if result.rowcount != 1:
        stored.revision = seen
        raise Conflict(f"rollout {stored.rollout.rollout_id} changed while it was being moved; try again")


async def mark_recorded(*, session: AsyncSession, rollout_id: str, moves: int) -> None:
    await session.exec(
        sa.update(RolloutRow)
        .where(RolloutRow.rollout_id == rollout_id, RolloutRow.recorded_moves < moves)
        .values(recorded_moves=moves)
    )


async def get_rollout(
    *, session: AsyncSession, scope: str, rollout_id: str, for_update: bool = False
) -> StoredRollout | None:
    query = select(RolloutRow).where(RolloutRow.scope == scope, RolloutRow.rollout_id == rollout_id)
    if for_update:
        query = query.with_for_update()
    row = (await session.exec(query)).first()
    return _from_row(row) if row is not None else None


async def running_rollout(
    *, session: AsyncSession, scope: str, model: str, for_update: bool = False
) -> StoredRollout | None:
    query = select(RolloutRow).where(
        RolloutRow.scope == scope, RolloutRow.model == model, RolloutRow.finished_at.is_(None)
    )
    if for_update:
        query = query.with_for_update()
    row = (await session.exec(query)).first()
    return _from_row(row) if row is not None else None


async def latest_rollout(*, session: AsyncSession, scope: str, model: str) -> StoredRollout | None:
    row = (
        await session.exec(
            select(RolloutRow)
            .where(RolloutRow.scope == scope, RolloutRow.model == model)
            .order_by(RolloutRow.started_at.desc(), RolloutRow.rollout_id.desc())
            .limit(1)
        )
    ).first()
    return _from_row(row) if row is not None else None


async def evaluation_seen(*, session: AsyncSession, scope: str, evaluation_id: str) -> StoredRollout | None:
    row = (
        await session.exec(
            select(RolloutRow).where(RolloutRow.scope == scope, RolloutRow.evaluation_id == evaluation_id)
        )
    ).first()
    return _from_row(row) if row is not None else None


async def running_rollout_ids(*, session: AsyncSession, scope: str) -> list[str]:
    rows = await session.exec(
        select(RolloutRow.rollout_id).where(RolloutRow.scope == scope, RolloutRow.finished_at.is_(None))
    )
    return list(rows.all())


async def unrecorded_rollout_ids(*, session: AsyncSession, scope: str) -> list[str]:
    rows = await session.exec(
        select(RolloutRow.rollout_id).where(
            RolloutRow.scope == scope, RolloutRow.recorded_moves < RolloutRow.moves
        )
    )
    return list(rows.all())


def _page_token(offset: int) -> str:
    return base64.urlsafe_b64encode(f"offset:{offset}".encode()).decode()


def _offset(token: str) -> int:
    if not token:
        return 0
    try:
        kind, _, value = base64.urlsafe_b64decode(token.encode()).decode().partition(":")
        offset = int(value)
    except Exception:
        offset, kind = -1, ""
    if kind != "offset" or offset < 0:
        raise InvalidArgument(f"page_token {token!r} is not one this server gave out; start without it")
    return offset


async def list_rollouts(
    *, session: AsyncSession, scope: str, model: str, state: int, page_size: int, page_token: str
) -> tuple[list[dpb.Rollout], str]:
    offset = _offset(page_token)
    query = select(RolloutRow.body).where(RolloutRow.scope == scope)
    if model:
        query = query.where(RolloutRow.model == model)
    if state:
        query = query.where(RolloutRow.state == state)
    query = query.order_by(RolloutRow.started_at.desc(), RolloutRow.rollout_id.desc())
    rows = list((await session.exec(query.offset(offset).limit(page_size + 1))).all())
    token = _page_token(offset + page_size) if len(rows) > page_size else ""
    return [dpb.Rollout.FromString(body) for body in rows[:page_size]], token


async def desired_state(
    *, session: AsyncSession, scope: str, model: str
) -> deployment_pb2.DesiredState | None:
    row = (
        await session.exec(
            select(DesiredStateRow).where(DesiredStateRow.scope == scope, DesiredStateRow.model == model)
        )
    ).first()
    return deployment_pb2.DesiredState.FromString(row.body) if row is not None else None


async def next_generation(*, session: AsyncSession, scope: str, model: str) -> int:
    """The model's next desired-state generation; the row stays locked until the caller commits, so
    that concurrent moves of one model get distinct, increasing generations."""
    current = (
        await session.exec(
            select(DesiredStateRow.generation)
            .where(DesiredStateRow.scope == scope, DesiredStateRow.model == model)
            .with_for_update()
        )
    ).first()
    return (current or 0) + 1


async def save_desired_state(
    *, session: AsyncSession, scope: str, desired: deployment_pb2.DesiredState
) -> None:
    values = {
        "scope": scope,
        "model": desired.model,
        "generation": desired.generation,
        "updated_at": moment(desired.updated_at),
        "body": desired.SerializeToString(),
    }
    statement = insert(DesiredStateRow).values(**values)
    statement = statement.on_conflict_do_update(
        index_elements=["scope", "model"],
        set_={k: statement.excluded[k] for k in ("generation", "updated_at", "body")},
    )
    await session.exec(statement)
