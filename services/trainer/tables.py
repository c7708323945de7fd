"""The trainer's tables, in its own schema: the durable queue of training jobs.

A job is one model spec version on one data set version. Its natural key
(model, spec_version, dataset, dataset_sha256) is unique, so a redelivered or replayed event, or a
second event about the same bytes, finds the job already there and trains nothing twice.
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

SCHEMA = "trainer"

PENDING, RUNNING, SUCCEEDED, FAILED = "pending", "running", "succeeded", "failed"


def _time(**kwargs) -> Field:
    return Field(sa_column=sa.Column(sa.DateTime(timezone=True), **kwargs))


class TrainingJobRow(SQLModel, table=True):
    __tablename__ = "training_jobs"
    __table_args__ = (
        sa.UniqueConstraint("model", "spec_version", "dataset", "dataset_sha256", name="training_jobs_key"),
        sa.Index("training_jobs_claimable", "lane", "status", "lease_until", "created_at"),
        {"schema": SCHEMA},
    )

    job_id: str = Field(primary_key=True)
    """Derived from the natural key; also the registry run id of the job's run."""
    model: str
    spec_version: int
    dataset: str
    dataset_version: int
    dataset_sha256: str
    dataset_uri: str
    dataset_format: str
    spec: bytes = Field(sa_column=sa.Column(sa.LargeBinary, nullable=False))
    """The `ModelSpecVersion` the job trains to, as it was when the job was queued."""
    trigger: int
    trigger_event_id: str
    trace_context: str = Field(default="{}")
    """JSON of the W3C trace headers of the event that queued the job: its work continues that trace."""
    status: str = Field(default=PENDING)
    attempts: int = Field(default=0)
    worker_kills: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    """Attempts whose worker process died mid-run (the OOM killer, a crash): retried, up to a bound."""
    announced: bool = Field(default=False)
    """Whether TrainingStarted went out (once per job, however often it is retried)."""
    worker: str = Field(default="")
    lease_until: datetime | None = _time(nullable=True)
    model_version: int = Field(default=0)
    failed_stage: int = Field(default=0)
    error: str = Field(default="")
    lane: str = Field(default="", sa_column_kwargs={"server_default": ""})
    """The Kafka topic prefix of the deployment that queued the job (see JobQueue)."""
    created_at: datetime = _time(nullable=False, server_default=sa.func.now())
    updated_at: datetime = _time(nullable=False, server_default=sa.func.now())
