"""Aliases (`production`, `canary`, any name a person gives) and their ledger: every move, never
updated, never deleted."""

from __future__ import annotations

from datetime import datetime

from sqlmodel.ext.asyncio.session import AsyncSession

from mlops.registry.v1 import registry_pb2 as pb
from services.registry.common import Page, timestamp
from services.registry.storage import q

_CHANGE_COLUMNS = "change_id, alias, from_version, to_version, actor, reason, changed_at"


def _change(model: str, row) -> pb.AliasChange:
    return pb.AliasChange(
        change_id=row[0],
        model=model,
        alias=row[1],
        from_version=row[2],
        to_version=row[3],
        actor=row[4],
        reason=row[5],
        changed_at=timestamp(row[6]),
    )


def _alias(model: str, row) -> pb.Alias:
    """An alias from (alias, version, updated_by, reason, updated_at)."""
    return pb.Alias(
        model=model,
        alias=row[0],
        version=row[1],
        updated_by=row[2],
        reason=row[3],
        updated_at=timestamp(row[4]),
    )


async def alias_version(session: AsyncSession, *, model: str, alias: str) -> int | None:
    return (
        await session.exec(
            q("SELECT version FROM {s}.aliases WHERE model = :m AND alias = :a"),
            params={"m": model, "a": alias},
        )
    ).scalar_one_or_none()


async def alias_of(session: AsyncSession, *, model: str, alias: str) -> pb.Alias:
    row = (
        await session.exec(
            q(
                "SELECT alias, version, updated_by, reason, updated_at FROM {s}.aliases WHERE model = :m AND alias = :a"
            ),
            params={"m": model, "a": alias},
        )
    ).one()
    return _alias(model, row)


async def upsert_alias(session: AsyncSession, *, alias: pb.Alias, updated_at: datetime) -> None:
    await session.exec(
        q(
            "INSERT INTO {s}.aliases (model, alias, version, updated_by, reason, updated_at) "
            "VALUES (:m, :a, :v, :u, :r, :t) ON CONFLICT (model, alias) DO UPDATE SET "
            "version = EXCLUDED.version, updated_by = EXCLUDED.updated_by, reason = EXCLUDED.reason, "
            "updated_at = EXCLUDED.updated_at"
        ),
        params={
            "m": alias.model,
            "a": alias.alias,
            "v": alias.version,
            "u": alias.updated_by,
            "r": alias.reason,
            "t": updated_at,
        },
    )


async def delete_alias(session: AsyncSession, *, model: str, alias: str) -> int | None:
    """Remove the alias: the version it pointed to, None when there was no such alias."""
    return (
        await session.exec(
            q("DELETE FROM {s}.aliases WHERE model = :m AND alias = :a RETURNING version"),
            params={"m": model, "a": alias},
        )
    ).scalar_one_or_none()


async def insert_change(
    session: AsyncSession,
    *,
    model: str,
    alias: str,
    from_version: int,
    to_version: int,
    actor: str,
    reason: str,
    changed_at: datetime,
) -> int:
    """Add a move to the ledger: its change id."""
    return (
        await session.exec(
            q(
                "INSERT INTO {s}.alias_changes (model, alias, from_version, to_version, actor, reason, changed_at) "
                "VALUES (:m, :a, :f, :t, :actor, :r, :at) RETURNING change_id"
            ),
            params={
                "m": model,
                "a": alias,
                "f": from_version,
                "t": to_version,
                "actor": actor,
                "r": reason,
                "at": changed_at,
            },
        )
    ).scalar_one()


async def list_aliases(session: AsyncSession, *, model: str, page: Page) -> tuple[list[pb.Alias], str]:
    rows = (
        await session.exec(
            q(
                "SELECT alias, version, updated_by, reason, updated_at FROM {s}.aliases "
                "WHERE model = :m ORDER BY alias LIMIT :limit OFFSET :offset"
            ),
            params={"m": model, **page.params},
        )
    ).all()
    rows, token = page.cut(rows)
    return [_alias(model, r) for r in rows], token


async def changes(
    session: AsyncSession, *, model: str, alias: str, at: datetime | None, page: Page
) -> tuple[list[pb.AliasChange], str]:
    """The ledger of a model (of one alias when `alias` is set), up to `at` when set, latest first."""
    rows = (
        await session.exec(
            q(
                f"SELECT {_CHANGE_COLUMNS} FROM {{s}}.alias_changes "
                "WHERE model = :m AND (:a = '' OR alias = :a) AND (CAST(:at AS timestamptz) IS NULL OR changed_at <= :at) "
                "ORDER BY change_id DESC LIMIT :limit OFFSET :offset"
            ),
            params={"m": model, "a": alias, "at": at, **page.params},
        )
    ).all()
    rows, token = page.cut(rows)
    return [_change(model, r) for r in rows], token


async def states_at(session: AsyncSession, *, model: str, alias: str, at: datetime) -> list[pb.Alias]:
    """Where each alias (or `alias`) pointed at `at` by the ledger; version 0 for one deleted by then."""
    rows = (
        await session.exec(
            q(
                "SELECT DISTINCT ON (alias) alias, to_version, actor, reason, changed_at FROM {s}.alias_changes "
                "WHERE model = :m AND (:a = '' OR alias = :a) AND changed_at <= :at "
                "ORDER BY alias, change_id DESC"
            ),
            params={"m": model, "a": alias, "at": at},
        )
    ).all()
    return [_alias(model, r) for r in rows]


async def changes_of_version(session: AsyncSession, *, model: str, version: int) -> list[pb.AliasChange]:
    """Every move to or from a version, latest first."""
    rows = (
        await session.exec(
            q(
                f"SELECT {_CHANGE_COLUMNS} FROM {{s}}.alias_changes "
                "WHERE model = :m AND (from_version = :v OR to_version = :v) ORDER BY change_id DESC"
            ),
            params={"m": model, "v": version},
        )
    ).all()
    return [_change(model, r) for r in rows]
