"""Evaluations of model versions: recorded once under the evaluator's id, never changed."""

from __future__ import annotations

from datetime import datetime

from mlops.db import Database
from mlops.errors import NotFound
from mlops.registry.v1 import registry_pb2 as pb
from services.registry.common import Page, check_model_name, need, now, timestamp
from services.registry.settings import RegistrySettings
from services.registry.storage import evaluations as storage
from services.registry.storage import versions


def checked_evaluation(request: pb.RecordEvaluationRequest, *, recorded_at: datetime) -> pb.Evaluation:
    """The evaluation to keep: its id, model and version checked; recorded now unless it says when."""
    evaluation = pb.Evaluation()
    evaluation.CopyFrom(request.evaluation)
    need(bool(evaluation.evaluation_id), "evaluation.evaluation_id is required (idempotency key)")
    check_model_name(evaluation.model)
    need(evaluation.version > 0, "evaluation.version must be a model version (1 or more)")
    if not evaluation.HasField("recorded_at"):
        evaluation.recorded_at.CopyFrom(timestamp(recorded_at))
    return evaluation


class Evaluations:
    def __init__(self, database: Database, settings: RegistrySettings) -> None:
        self.database = database
        self.settings = settings

    async def record_evaluation(self, request: pb.RecordEvaluationRequest) -> pb.RecordEvaluationResponse:
        evaluation = checked_evaluation(request, recorded_at=now())
        async with self.database.transaction() as tx:
            if not await versions.version_exists(tx, model=evaluation.model, version=evaluation.version):
                raise NotFound(f"model {evaluation.model!r} has no version {evaluation.version} to evaluate")
            inserted = await storage.insert_evaluation(tx, evaluation=evaluation)
        if not inserted:
            first = await self.get_evaluation(pb.GetEvaluationRequest(evaluation_id=evaluation.evaluation_id))
            return pb.RecordEvaluationResponse(evaluation=first, created=False)
        return pb.RecordEvaluationResponse(evaluation=evaluation, created=True)

    async def get_evaluation(self, request: pb.GetEvaluationRequest) -> pb.Evaluation:
        async with self.database.session() as session:
            found = await storage.evaluation_by_id(session, evaluation_id=request.evaluation_id)
        if found is None:
            raise NotFound(f"evaluation {request.evaluation_id!r} does not exist")
        return found

    async def list_evaluations(self, request: pb.ListEvaluationsRequest) -> pb.ListEvaluationsResponse:
        page = Page(request.page_size, request.page_token, self.settings)
        async with self.database.session() as session:
            found, token = await storage.list_evaluations(session, request=request, page=page)
        return pb.ListEvaluationsResponse(evaluations=found, next_page_token=token)
