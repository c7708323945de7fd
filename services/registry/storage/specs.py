"""Model specs: every applied version of a model's spec, the latest one per model found by the counter."""

from __future__ import annotations

from sqlmodel.ext.asyncio.session import AsyncSession

from mlops.registry.v1 import registry_pb2 as pb
from services.registry.common import Page, json_text, parse
from services.registry.storage import q


async def insert_spec(session: AsyncSession, *, applied: pb.ModelSpecVersion) -> None:
    await session.exec(
        q(
            "INSERT INTO {s}.model_specs (model, version, dataset, sha256, labels, applied_at, body) "
            "VALUES (:m, :v, :d, :h, CAST(:l AS jsonb), now(), :b)"
        ),
        params={
            "m": applied.model,
            "v": applied.version,
            "d": applied.spec.spec.dataset,
            "h": applied.sha256,
            "l": json_text(dict(applied.spec.metadata.labels)),
            "b": applied.SerializeToString(),
        },
    )


async def spec_by_version(session: AsyncSession, *, model: str, version: int) -> pb.ModelSpecVersion | None:
    body = (
        await session.exec(
            q("SELECT body FROM {s}.model_specs WHERE model = :m AND version = :v"),
            params={"m": model, "v": version},
        )
    ).scalar_one_or_none()
    return None if body is None else parse(pb.ModelSpecVersion, body)


async def latest_spec(session: AsyncSession, *, model: str) -> pb.ModelSpecVersion | None:
    body = (
        await session.exec(
            q("SELECT body FROM {s}.model_specs WHERE model = :m ORDER BY version DESC LIMIT 1"),
            params={"m": model},
        )
    ).scalar_one_or_none()
    return None if body is None else parse(pb.ModelSpecVersion, body)


async def list_latest_specs(
    session: AsyncSession, *, dataset: str, labels: dict[str, str], page: Page
) -> tuple[list[pb.ModelSpecVersion], str]:
    """The latest spec of each model, by model name; only those on `dataset` and carrying `labels`
    when they are given."""
    bodies = (
        (
            await session.exec(
                q(
                    "SELECT s.body FROM {s}.model_specs s JOIN {s}.models m ON m.name = s.model AND m.latest_spec_version = s.version "
                    "WHERE (:d = '' OR s.dataset = :d) AND s.labels @> CAST(:l AS jsonb) "
                    "ORDER BY s.model LIMIT :limit OFFSET :offset"
                ),
                params={"d": dataset, "l": json_text(labels), **page.params},
            )
        )
        .scalars()
        .all()
    )
    bodies, token = page.cut(bodies)
    return [parse(pb.ModelSpecVersion, b) for b in bodies], token
