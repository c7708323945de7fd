"""Evaluations of model versions, each kept once under the evaluator's id."""

from __future__ import annotations

from sqlmodel.ext.asyncio.session import AsyncSession

from mlops.registry.v1 import registry_pb2 as pb
from services.registry.common import Page, Where, moment, parse
from services.registry.storage import page_of, q


async def insert_evaluation(session: AsyncSession, *, evaluation: pb.Evaluation) -> bool:
    """Store an evaluation; False when one with its id exists already (left as it is)."""
    inserted = (
        await session.exec(
            q(
                "INSERT INTO {s}.evaluations (evaluation_id, model, version, passed, recorded_at, body) "
                "VALUES (:e, :m, :v, :p, :t, :b) ON CONFLICT DO NOTHING RETURNING evaluation_id"
            ),
            params={
                "e": evaluation.evaluation_id,
                "m": evaluation.model,
                "v": evaluation.version,
                "p": evaluation.passed,
                "t": moment(evaluation.recorded_at),
                "b": evaluation.SerializeToString(),
            },
        )
    ).scalar_one_or_none()
    return inserted is not None


async def evaluation_by_id(session: AsyncSession, *, evaluation_id: str) -> pb.Evaluation | None:
    body = (
        await session.exec(
            q("SELECT body FROM {s}.evaluations WHERE evaluation_id = :e"), params={"e": evaluation_id}
        )
    ).scalar_one_or_none()
    return None if body is None else parse(pb.Evaluation, body)


async def list_evaluations(
    session: AsyncSession, *, request: pb.ListEvaluationsRequest, page: Page
) -> tuple[list[pb.Evaluation], str]:
    """Evaluations of a model (or one version of it), the latest recorded first."""
    where = Where(model=request.model, version=request.version)
    if request.HasField("passed"):
        where.add("passed = :passed", passed=request.passed)
    return await page_of(
        session, cls=pb.Evaluation, table="evaluations", where=where, order="recorded_at DESC", page=page
    )
