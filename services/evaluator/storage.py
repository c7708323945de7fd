"""Reads and writes of the evaluator's own tables, inside the caller's transaction."""

from __future__ import annotations

from datetime import UTC

from sqlalchemy.dialects.postgresql import insert
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from mlops.events.v1 import evaluation_pb2
from services.evaluator.tables import PublishedEvaluationRow


async def find_evaluation(
    *, session: AsyncSession, evaluation_id: str
) -> evaluation_pb2.ModelEvaluated | None:
    row = (
        await session.exec(
            select(PublishedEvaluationRow).where(PublishedEvaluationRow.evaluation_id == evaluation_id)
        )
    ).first()
    if row is None:
        return None
    return evaluation_pb2.ModelEvaluated.FromString(row.body)


async def save_evaluation(*, session: AsyncSession, evaluated: evaluation_pb2.ModelEvaluated) -> bool:
    """Store a published evaluation; False if one with its id was stored before."""
    statement = (
        insert(PublishedEvaluationRow)
        .values(
            evaluation_id=evaluated.evaluation_id,
            model=evaluated.model,
            version=evaluated.version,
            passed=evaluated.passed,
            evaluated_at=evaluated.evaluated_at.ToDatetime(tzinfo=UTC),
            body=evaluated.SerializeToString(),
        )
        .on_conflict_do_nothing(index_elements=["evaluation_id"])
    )
    result = await session.exec(statement)
    return result.rowcount == 1
