"""Model versions, each read with the aliases that point at it."""

from __future__ import annotations

from datetime import datetime
from typing import NamedTuple

import asyncpg
from sqlmodel.ext.asyncio.session import AsyncSession

from mlops.registry.v1 import registry_pb2 as pb
from services.registry.common import Page, json_text, moment, parse
from services.registry.storage import q
from services.registry.tables import SCHEMA


class SortOrder(NamedTuple):
    """How a search sorts: by `created_at` (the default, newest first), `version` or a metric."""

    field: str = ""
    direction: str = "DESC"
    metric: str = ""


class MetricFilter(NamedTuple):
    metric: str
    operator: str
    value: float


_WITH_ALIASES = (
    "SELECT v.body, ARRAY(SELECT a2.alias FROM {s}.aliases a2 WHERE a2.model = v.model AND a2.version = v.version "
    "ORDER BY a2.alias) FROM {s}.model_versions v "
)
# The hot reads (every deployment and client resolves `name@alias`): prepared statements on asyncpg.
_BY_ALIAS = (
    "SELECT v.body, ARRAY(SELECT a2.alias FROM {s}.aliases a2 WHERE a2.model = v.model AND a2.version = v.version "
    "ORDER BY a2.alias) FROM {s}.aliases a JOIN {s}.model_versions v ON v.model = a.model AND v.version = a.version "
    "WHERE a.model = $1 AND a.alias = $2"
).replace("{s}", SCHEMA)
_BY_VERSION = (
    "SELECT v.body, ARRAY(SELECT a2.alias FROM {s}.aliases a2 WHERE a2.model = v.model AND a2.version = v.version "
    "ORDER BY a2.alias) FROM {s}.model_versions v WHERE v.model = $1 AND v.version = $2"
).replace("{s}", SCHEMA)
_LATEST = (
    "SELECT v.body, ARRAY(SELECT a2.alias FROM {s}.aliases a2 WHERE a2.model = v.model AND a2.version = v.version "
    "ORDER BY a2.alias) FROM {s}.model_versions v WHERE v.model = $1 ORDER BY v.version DESC LIMIT 1"
).replace("{s}", SCHEMA)


def _version(body: bytes) -> pb.ModelVersion:
    version = parse(pb.ModelVersion, body)
    # Versions recorded before origins existed were all the trainer's.
    version.origin = version.origin or "trainer"
    return version


def _with_aliases(row) -> pb.ModelVersion:
    version = _version(row[0])
    version.aliases.extend(row[1])
    return version


async def version_by_alias(pool: asyncpg.Pool, *, model: str, alias: str) -> pb.ModelVersion | None:
    row = await pool.fetchrow(_BY_ALIAS, model, alias)
    return None if row is None else _with_aliases(row)


async def version_by_number(pool: asyncpg.Pool, *, model: str, version: int) -> pb.ModelVersion | None:
    row = await pool.fetchrow(_BY_VERSION, model, version)
    return None if row is None else _with_aliases(row)


async def latest_version(pool: asyncpg.Pool, *, model: str) -> pb.ModelVersion | None:
    row = await pool.fetchrow(_LATEST, model)
    return None if row is None else _with_aliases(row)


async def version_exists(session: AsyncSession, *, model: str, version: int) -> bool:
    return (
        await session.exec(
            q("SELECT 1 FROM {s}.model_versions WHERE model = :m AND version = :v"),
            params={"m": model, "v": version},
        )
    ).first() is not None


async def version_of_run(session: AsyncSession, *, model: str, run_id: str) -> pb.ModelVersion | None:
    body = (
        await session.exec(
            q("SELECT body FROM {s}.model_versions WHERE model = :m AND run_id = :r"),
            params={"m": model, "r": run_id},
        )
    ).scalar_one_or_none()
    return None if body is None else _version(body)


async def version_of_artifact(session: AsyncSession, *, model: str, sha256: str) -> pb.ModelVersion | None:
    """The model's version registered with these bytes (RegisterModel's idempotency key), if any."""
    body = (
        await session.exec(
            q(
                "SELECT body FROM {s}.model_versions WHERE model = :m AND artifact_sha256 = :h "
                "AND origin = 'external'"
            ),
            params={"m": model, "h": sha256},
        )
    ).scalar_one_or_none()
    return None if body is None else _version(body)


async def insert_version(session: AsyncSession, *, record: pb.ModelVersion, created_at: datetime) -> None:
    await session.exec(
        q(
            "INSERT INTO {s}.model_versions (model, version, run_id, dataset, dataset_version, metrics, tags, "
            "created_at, origin, artifact_sha256, body) "
            "VALUES (:m, :v, :r, :d, :dv, CAST(:metrics AS jsonb), CAST(:tags AS jsonb), :t, :o, :h, :b)"
        ),
        params={
            "m": record.model,
            "v": record.version,
            "r": record.run_id,
            "d": record.dataset,
            "dv": record.dataset_version,
            "metrics": json_text(dict(record.metrics)),
            "tags": json_text(dict(record.tags)),
            "t": created_at,
            "o": record.origin or "trainer",
            "h": record.artifact_sha256,
            "b": record.SerializeToString(),
        },
    )


async def version_for_update(session: AsyncSession, *, model: str, version: int) -> pb.ModelVersion | None:
    body = (
        await session.exec(
            q("SELECT body FROM {s}.model_versions WHERE model = :m AND version = :v FOR UPDATE"),
            params={"m": model, "v": version},
        )
    ).scalar_one_or_none()
    return None if body is None else _version(body)


async def update_tags(session: AsyncSession, *, record: pb.ModelVersion) -> None:
    await session.exec(
        q(
            "UPDATE {s}.model_versions SET tags = CAST(:t AS jsonb), body = :b WHERE model = :m AND version = :v"
        ),
        params={
            "t": json_text(dict(record.tags)),
            "b": record.SerializeToString(),
            "m": record.model,
            "v": record.version,
        },
    )


def order_sql(order: SortOrder, params: dict[str, object]) -> str:
    if not order.field:
        return "v.created_at DESC, v.model, v.version DESC"
    if order.field in ("created_at", "version"):
        return f"v.{order.field} {order.direction}, v.model"
    params["order_metric"] = order.metric
    return f"(v.metrics ->> :order_metric)::float8 {order.direction} NULLS LAST, v.model, v.version DESC"


async def search_versions(
    session: AsyncSession,
    *,
    request: pb.SearchModelVersionsRequest,
    metric_filters: list[MetricFilter],
    order: SortOrder,
    page: Page,
) -> tuple[list[pb.ModelVersion], str]:
    """Versions matching every filter the request sets, in `order`."""
    where = ["TRUE"]
    params: dict[str, object] = dict(page.params)
    if request.models:
        where.append("v.model = ANY(:models)")
        params["models"] = list(request.models)
    if request.dataset:
        where.append("v.dataset = :dataset")
        params["dataset"] = request.dataset
    if request.dataset_version:
        where.append("v.dataset_version = :dataset_version")
        params["dataset_version"] = request.dataset_version
    if request.run_id:
        where.append("v.run_id = :run_id")
        params["run_id"] = request.run_id
    if request.tags:
        where.append("v.tags @> CAST(:tags AS jsonb)")
        params["tags"] = json_text(dict(request.tags))
    for index, condition in enumerate(metric_filters):
        where.append(f"(v.metrics ->> :mf{index})::float8 {condition.operator} :mv{index}")
        params[f"mf{index}"], params[f"mv{index}"] = condition.metric, condition.value
    if request.alias:
        where.append(
            "EXISTS (SELECT 1 FROM {s}.aliases a WHERE a.model = v.model AND a.version = v.version AND a.alias = :alias)"
        )
        params["alias"] = request.alias
    if request.HasField("created_after"):
        where.append("v.created_at >= :after")
        params["after"] = moment(request.created_after)
    if request.HasField("created_before"):
        where.append("v.created_at < :before")
        params["before"] = moment(request.created_before)
    order_by = order_sql(order, params)
    sql = _WITH_ALIASES + f"WHERE {' AND '.join(where)} ORDER BY {order_by} LIMIT :limit OFFSET :offset"
    rows = (await session.exec(q(sql), params=params)).all()
    rows, token = page.cut(rows)
    return [_with_aliases(r) for r in rows], token
