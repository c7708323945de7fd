"""Data sets (one counter row per name) and their immutable versions."""

from __future__ import annotations

from datetime import datetime

from sqlmodel.ext.asyncio.session import AsyncSession

from mlops.registry.v1 import registry_pb2 as pb
from services.registry.common import Page, Where, parse, timestamp
from services.registry.storage import page_of, q


async def lock_dataset(session: AsyncSession, *, name: str) -> int:
    """Create the data set's counter row if needed and lock it: its latest version (0 for none)."""
    await session.exec(
        q("INSERT INTO {s}.datasets (name) VALUES (:n) ON CONFLICT DO NOTHING"), params={"n": name}
    )
    return (
        await session.exec(
            q("SELECT latest_version FROM {s}.datasets WHERE name = :n FOR UPDATE"), params={"n": name}
        )
    ).scalar_one()


async def version_recorded(session: AsyncSession, *, dataset: str, sha256: str) -> bool:
    sql = q("SELECT 1 FROM {s}.dataset_versions WHERE dataset = :d AND sha256 = :h")
    return (await session.exec(sql, params={"d": dataset, "h": sha256})).first() is not None


async def version_by_sha256(session: AsyncSession, *, dataset: str, sha256: str) -> pb.DatasetVersion | None:
    body = (
        await session.exec(
            q("SELECT body FROM {s}.dataset_versions WHERE dataset = :d AND sha256 = :x"),
            params={"d": dataset, "x": sha256},
        )
    ).scalar_one_or_none()
    return None if body is None else parse(pb.DatasetVersion, body)


async def version_by_number(session: AsyncSession, *, dataset: str, version: int) -> pb.DatasetVersion | None:
    body = (
        await session.exec(
            q("SELECT body FROM {s}.dataset_versions WHERE dataset = :d AND version = :x"),
            params={"d": dataset, "x": version},
        )
    ).scalar_one_or_none()
    return None if body is None else parse(pb.DatasetVersion, body)


async def latest_version(session: AsyncSession, *, dataset: str) -> pb.DatasetVersion | None:
    body = (
        await session.exec(
            q("SELECT body FROM {s}.dataset_versions WHERE dataset = :d ORDER BY version DESC LIMIT 1"),
            params={"d": dataset},
        )
    ).scalar_one_or_none()
    return None if body is None else parse(pb.DatasetVersion, body)


async def number_of(session: AsyncSession, *, dataset: str, sha256: str) -> int:
    """The version that has this sha256; 0 when none has."""
    return (
        await session.exec(
            q("SELECT version FROM {s}.dataset_versions WHERE dataset = :d AND sha256 = :h"),
            params={"d": dataset, "h": sha256},
        )
    ).scalar_one_or_none() or 0


async def sha256_of(session: AsyncSession, *, dataset: str, version: int) -> str:
    return (
        await session.exec(
            q("SELECT sha256 FROM {s}.dataset_versions WHERE dataset = :d AND version = :v"),
            params={"d": dataset, "v": version},
        )
    ).scalar_one()


async def insert_version(session: AsyncSession, *, record: pb.DatasetVersion, committed_at: datetime) -> None:
    """Store a new version and make it the data set's latest."""
    await session.exec(
        q("UPDATE {s}.datasets SET latest_version = :v, updated_at = now() WHERE name = :n"),
        params={"v": record.version, "n": record.dataset},
    )
    await session.exec(
        q(
            "INSERT INTO {s}.dataset_versions (dataset, version, sha256, committed_at, body) "
            "VALUES (:d, :v, :h, :t, :b)"
        ),
        params={
            "d": record.dataset,
            "v": record.version,
            "h": record.sha256,
            "t": committed_at,
            "b": record.SerializeToString(),
        },
    )


async def list_datasets(
    session: AsyncSession, *, name_prefix: str, page: Page
) -> tuple[list[pb.Dataset], str]:
    """Data sets with at least one version, the latest changed first."""
    rows = (
        await session.exec(
            q(
                "SELECT name, latest_version, created_at, updated_at FROM {s}.datasets "
                "WHERE name LIKE :p AND latest_version > 0 ORDER BY updated_at DESC, name LIMIT :limit OFFSET :offset"
            ),
            params={"p": name_prefix.replace("%", r"\%") + "%", **page.params},
        )
    ).all()
    rows, token = page.cut(rows)
    datasets = [
        pb.Dataset(
            name=r[0],
            latest_version=r[1],
            version_count=r[1],
            created_at=timestamp(r[2]),
            updated_at=timestamp(r[3]),
        )
        for r in rows
    ]
    return datasets, token


async def list_versions(
    session: AsyncSession, *, request: pb.ListDatasetVersionsRequest, page: Page
) -> tuple[list[pb.DatasetVersion], str]:
    """A data set's versions, newest first, within the request's commit times."""
    where = Where(dataset=request.dataset).between(
        "committed_at", request, "committed_after", "committed_before"
    )
    return await page_of(
        session, cls=pb.DatasetVersion, table="dataset_versions", where=where, order="version DESC", page=page
    )
