"""The monitor's tables, in its own schema, beside the bus's inbox (ground truth) and outbox.

Inference logs are not de-duplicated by an inbox row per message: the consumed offset of every
partition is stored in `offsets`, in the same transaction as the window counts and predictions
those messages produced, and consumption resumes from there after a restart.
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlmodel import AutoString, Field, SQLModel

from mlops.db.columns import json_column, time_column

SCHEMA = "monitor"


class WindowRow(SQLModel, table=True):
    """One tumbling window of one model version: open (counts growing) or closed (judged)."""

    __tablename__ = "windows"
    __table_args__ = (sa.Index("windows_model_closed", "model", "closed"), {"schema": SCHEMA})

    consumer_group: str = Field(primary_key=True)
    """The inference-log consumer group whose offsets these counts agree with."""
    model: str = Field(primary_key=True)
    version: int = Field(primary_key=True, sa_type=sa.BigInteger)
    window_start: datetime = Field(sa_column=sa.Column(sa.DateTime(timezone=True), primary_key=True))
    window_end: datetime = time_column()
    partition: int
    """The inference-log partition the model's records arrive on (they are keyed by model)."""
    sample_count: int = Field(sa_type=sa.BigInteger)
    late_count: int = Field(default=0, sa_type=sa.BigInteger)
    counts: bytes = Field(sa_column=sa.Column(sa.LargeBinary, nullable=False))
    """int64 counts on the version's reference slots (`services.monitor.reference`)."""
    links: list = Field(
        default_factory=list,
        sa_column=sa.Column(postgresql.JSONB, nullable=False, server_default="[]"),
    )
    """traceparents of the first inference-log batches counted in the window."""
    profile_sha256: str
    closed: bool = False
    drifted: bool = False
    body: bytes | None = Field(default=None, sa_column=sa.Column(sa.LargeBinary, nullable=True))
    """The closed window as `mlops.monitor.v1.DriftWindow`."""


class VersionStateRow(SQLModel, table=True):
    """Alarm state of one model version."""

    __tablename__ = "version_state"
    __table_args__ = {"schema": SCHEMA}

    model: str = Field(primary_key=True)
    version: int = Field(primary_key=True, sa_type=sa.BigInteger)
    consecutive: int = 0
    """Drifted judged windows in a row, up to the newest judged one."""
    last_alarm_at: datetime | None = Field(default=None, sa_type=sa.DateTime(timezone=True))
    degraded_windows: int = 0
    last_degradation_at: datetime | None = Field(default=None, sa_type=sa.DateTime(timezone=True))
    live_metrics: dict = json_column()
    """Live metrics of the newest closed ground-truth window."""
    new_model_needed_at: datetime | None = Field(default=None, sa_type=sa.DateTime(timezone=True))
    """When an alarm asked for a new model: the spec says the model is trained outside the platform."""
    new_model_reason: str | None = Field(default=None, sa_type=sa.Text)


class OffsetRow(SQLModel, table=True):
    """The next inference-log offset to read per partition, committed with the state it produced."""

    __tablename__ = "offsets"
    __table_args__ = {"schema": SCHEMA}

    consumer_group: str = Field(primary_key=True)
    topic: str = Field(primary_key=True)
    partition: int = Field(primary_key=True)
    next_offset: int = Field(sa_type=sa.BigInteger)


class PredictionBatchRow(SQLModel, table=True):
    """The predictions of one version from one logged batch, kept for `prediction_retention_hours`
    for the ground-truth join and for retraining sets (`services.monitor.predictions`). One row per
    batch, not per prediction: per-row columns are packed big-endian arrays, and the request ids
    that find a row are in `prediction_requests`."""

    __tablename__ = "prediction_batches"
    __table_args__ = (
        sa.Index("prediction_batches_logged_at", "logged_at", postgresql_using="brin"),
        sa.Index("prediction_batches_model_version", "model", "version", "logged_at"),
        {"schema": SCHEMA},
    )

    id: int | None = Field(default=None, primary_key=True, sa_type=sa.BigInteger)
    model: str
    version: int = Field(sa_type=sa.BigInteger)
    logged_at: datetime = time_column()
    """The earliest request time in the batch."""
    timestamps: bytes = Field(sa_column=sa.Column(sa.LargeBinary, nullable=False))
    """Request times, seconds since the epoch, float64 big-endian."""
    class_labels: list[str] | None = Field(
        default=None, sa_column=sa.Column(postgresql.ARRAY(sa.Text()), nullable=True)
    )
    """The classes `classes` indexes (classification)."""
    classes: bytes | None = Field(default=None, sa_column=sa.Column(sa.LargeBinary, nullable=True))
    """Predicted class of each row, int32 big-endian index into `class_labels`, -1 for none."""
    predictions: bytes | None = Field(default=None, sa_column=sa.Column(sa.LargeBinary, nullable=True))
    """Predicted value of each row, float64 big-endian (regression)."""
    width: int
    """Features per row."""
    features: bytes = Field(sa_column=sa.Column(sa.LargeBinary, nullable=False))
    """The input rows in the profile's feature order, float64, row-major."""


prediction_requests = sa.Table(
    "prediction_requests",
    SQLModel.metadata,
    sa.Column("request_id", AutoString(), nullable=False),
    sa.Column("batch_id", sa.BigInteger(), nullable=False),
    sa.Column("position", sa.Integer(), nullable=False),
    # Equality is all the join asks, and a hash index costs least to keep up at ingest rates. No key
    # and no foreign key: each would cost an index probe per prediction; retention deletes both.
    sa.Index("prediction_requests_request_id", "request_id", postgresql_using="hash"),
    sa.Index("prediction_requests_batch_id", "batch_id", postgresql_using="brin"),
    schema=SCHEMA,
)
"""Where each logged request id's prediction is: its `prediction_batches` row and row number."""


class LabelRow(SQLModel, table=True):
    """Ground truth as it arrived; joined with predictions by request id, then marked matched."""

    __tablename__ = "labels"
    __table_args__ = (
        sa.Index("labels_request", "model", "request_id"),
        sa.Index("labels_pending", "received_at", postgresql_where=sa.text("NOT matched")),
        {"schema": SCHEMA},
    )

    id: int | None = Field(default=None, primary_key=True, sa_type=sa.BigInteger)
    model: str
    request_id: str
    label: str | None = None
    value: float | None = None
    observed_at: datetime = time_column()
    received_at: datetime = time_column(server_default=sa.func.now())
    matched: bool = False


class PerformanceWindowRow(SQLModel, table=True):
    """Sums of one version's joined predictions in one window, from which its live metrics follow."""

    __tablename__ = "performance_windows"
    __table_args__ = {"schema": SCHEMA}

    model: str = Field(primary_key=True)
    version: int = Field(primary_key=True, sa_type=sa.BigInteger)
    window_start: datetime = Field(sa_column=sa.Column(sa.DateTime(timezone=True), primary_key=True))
    window_end: datetime = time_column()
    labelled: int = Field(default=0, sa_type=sa.BigInteger)
    correct: int = Field(default=0, sa_type=sa.BigInteger)
    sum_squared_error: float = 0.0
    sum_absolute_error: float = 0.0
    sum_truth: float = 0.0
    sum_truth_squared: float = 0.0
    closed: bool = False
    metrics: dict = json_column()
