"""The deployer's tables, in its own schema: rollouts and the desired state of every model, beside
the bus's inbox and outbox.

Rows keep the public protobuf messages (`Rollout`, `DesiredState`) as `body`, and the columns that
queries filter on. `scope` is the bus topic prefix of the deployer that owns the row: deployers of
environments that share one cluster and one database (tests beside the running stack) never steer
each other's rollouts.
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from mlops.db.columns import message_column, time_column

SCHEMA = "deployer"


class RolloutRow(SQLModel, table=True):
    """One rollout. At most one per (scope, model) runs (finished_at is null)."""

    __tablename__ = "rollouts"
    __table_args__ = (
        sa.Index("rollouts_scope_model_started", "scope", "model", "started_at"),
        sa.Index(
            "rollouts_one_running_per_model",
            "scope",
            "model",
            unique=True,
            postgresql_where=sa.text("finished_at IS NULL"),
        ),
        {"schema": SCHEMA},
    )

    rollout_id: str = Field(primary_key=True)
    scope: str
    model: str
    candidate_version: int
    baseline_version: int
    strategy: str
    state: int
    evaluation_id: str = Field(index=True)
    started_at: datetime = time_column()
    step_started_at: datetime = time_column()
    updated_at: datetime = time_column()
    finished_at: datetime | None = Field(
        default=None, sa_column=sa.Column(sa.DateTime(timezone=True), nullable=True)
    )
    revision: int
    """Increases with every write: a move is applied only to the revision it was decided on."""
    hold: str
    """Why the step is held (no answer, too few requests, …), so that a hold is announced once."""
    moves: int
    """Moves so far (the length of the rollout's history)."""
    recorded_moves: int
    """Moves the registry has a deployment record of; behind `moves` until `RecordDeployment`
    succeeded, and caught up by the next tick when it failed."""
    health_timeout_seconds: int = Field(sa_column=sa.Column(sa.Integer, nullable=False, server_default="120"))
    """The spec's `rollout.health_timeout_seconds` when the rollout started: how long a step may wait
    for a health verdict after its time."""
    on_health_timeout: str = Field(sa_column=sa.Column(sa.String, nullable=False, server_default="rollback"))
    """The spec's `rollout.on_health_timeout`: `rollback` or `pause`."""
    verdict_at: datetime | None = Field(
        default=None, sa_column=sa.Column(sa.DateTime(timezone=True), nullable=True)
    )
    """When the monitor last gave a verdict (healthy or broken) or a person resumed: the health
    timeout counts from here or from the end of the step's time, whichever is later, so that a
    restarted deployer keeps the same clock."""
    traceparent: str
    """W3C trace context (JSON) of the event that started the rollout: every later move continues it."""
    candidate: bytes = message_column()
    """The candidate as it serves (`ServingVersion`: artifact, features, classes)."""
    baseline: bytes = Field(sa_column=sa.Column(sa.LargeBinary, nullable=True))
    """The baseline as it serves; null when the model had nothing in production."""
    batching: bytes = message_column()
    body: bytes = message_column()
    """The public `Rollout` message with its history."""


class DesiredStateRow(SQLModel, table=True):
    """The desired state the deployer last published for a model."""

    __tablename__ = "desired_states"
    __table_args__ = {"schema": SCHEMA}

    scope: str = Field(primary_key=True)
    model: str = Field(primary_key=True)
    generation: int
    updated_at: datetime = time_column()
    body: bytes = message_column()
