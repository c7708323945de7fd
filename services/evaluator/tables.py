"""The evaluator's tables, in its own schema: the evaluations it published, beside the bus's inbox
and outbox. `body` keeps the `ModelEvaluated` message as published."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

SCHEMA = "evaluator"


class PublishedEvaluationRow(SQLModel, table=True):
    """One row per evaluation id (model, version, spec version, data set sha256): a second
    `ModelTrained` for the same content, under another event id, is recognised and not evaluated again."""

    __tablename__ = "evaluations"
    __table_args__ = (sa.Index("evaluations_model_version", "model", "version"), {"schema": SCHEMA})

    evaluation_id: str = Field(primary_key=True)
    model: str
    version: int
    passed: bool
    evaluated_at: datetime = Field(sa_column=sa.Column(sa.DateTime(timezone=True), nullable=False))
    body: bytes = Field(sa_column=sa.Column(sa.LargeBinary, nullable=False))
