"""The registry's tables, in its own schema. Each row keeps the public protobuf message in `body`
(full fidelity, no converter layer) beside the columns that queries filter and sort on."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from mlops.db.columns import json_column, message_column, time_column

SCHEMA = "registry"


class DatasetRow(SQLModel, table=True):
    __tablename__ = "datasets"
    __table_args__ = {"schema": SCHEMA}

    name: str = Field(primary_key=True)
    latest_version: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    created_at: datetime = time_column(server_default=sa.func.now())
    updated_at: datetime = time_column(server_default=sa.func.now())


class DatasetVersionRow(SQLModel, table=True):
    __tablename__ = "dataset_versions"
    __table_args__ = (
        sa.UniqueConstraint("dataset", "sha256", name="dataset_versions_sha256"),
        {"schema": SCHEMA},
    )

    dataset: str = Field(primary_key=True)
    version: int = Field(primary_key=True)
    sha256: str
    committed_at: datetime = time_column()
    body: bytes = message_column()


class ModelRow(SQLModel, table=True):
    """One row per model name: the counters that keep versions gapless under concurrent writers."""

    __tablename__ = "models"
    __table_args__ = {"schema": SCHEMA}

    name: str = Field(primary_key=True)
    latest_version: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    latest_spec_version: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    created_at: datetime = time_column(server_default=sa.func.now())


class ModelSpecRow(SQLModel, table=True):
    __tablename__ = "model_specs"
    __table_args__ = {"schema": SCHEMA}

    model: str = Field(primary_key=True)
    version: int = Field(primary_key=True)
    dataset: str = Field(index=True)
    sha256: str
    labels: dict = json_column()
    applied_at: datetime = time_column()
    body: bytes = message_column()


class ModelVersionRow(SQLModel, table=True):
    __tablename__ = "model_versions"
    __table_args__ = (
        sa.Index(
            "model_versions_run", "model", "run_id", unique=True, postgresql_where=sa.text("run_id <> ''")
        ),
        sa.Index("model_versions_dataset", "dataset", "dataset_version"),
        sa.Index(
            "model_versions_external_sha256",
            "model",
            "artifact_sha256",
            unique=True,
            postgresql_where=sa.text("origin = 'external'"),
        ),
        {"schema": SCHEMA},
    )

    model: str = Field(primary_key=True)
    version: int = Field(primary_key=True)
    run_id: str
    dataset: str
    dataset_version: int
    origin: str = Field(sa_column_kwargs={"server_default": "trainer"})
    """"trainer" or "external" (RegisterModel)."""
    artifact_sha256: str = Field(sa_column_kwargs={"server_default": ""})
    metrics: dict = json_column()
    tags: dict = json_column()
    created_at: datetime = time_column()
    body: bytes = message_column()


class RunRow(SQLModel, table=True):
    __tablename__ = "runs"
    __table_args__ = (sa.Index("runs_model_started", "model", "started_at"), {"schema": SCHEMA})

    run_id: str = Field(primary_key=True)
    model: str
    status: int
    dataset: str
    dataset_version: int
    started_at: datetime = time_column()
    body: bytes = message_column()


class RunEpochRow(SQLModel, table=True):
    __tablename__ = "run_epochs"
    __table_args__ = {"schema": SCHEMA}

    run_id: str = Field(primary_key=True)
    epoch: int = Field(primary_key=True)
    body: bytes = message_column()


class EvaluationRow(SQLModel, table=True):
    __tablename__ = "evaluations"
    __table_args__ = (sa.Index("evaluations_model_version", "model", "version"), {"schema": SCHEMA})

    evaluation_id: str = Field(primary_key=True)
    model: str
    version: int
    passed: bool
    recorded_at: datetime = time_column()
    body: bytes = message_column()


class AliasRow(SQLModel, table=True):
    __tablename__ = "aliases"
    __table_args__ = {"schema": SCHEMA}

    model: str = Field(primary_key=True)
    alias: str = Field(primary_key=True)
    version: int
    updated_by: str
    reason: str
    updated_at: datetime = time_column()


class AliasChangeRow(SQLModel, table=True):
    """The alias ledger: every move, never updated, never deleted."""

    __tablename__ = "alias_changes"
    __table_args__ = (
        sa.Index("alias_changes_model_alias", "model", "alias", "changed_at"),
        {"schema": SCHEMA},
    )

    change_id: int | None = Field(default=None, primary_key=True)
    model: str
    alias: str
    from_version: int
    to_version: int
    actor: str
    reason: str
    changed_at: datetime = time_column()


class DeploymentRow(SQLModel, table=True):
    __tablename__ = "deployments"
    __table_args__ = (sa.Index("deployments_model_version", "model", "version"), {"schema": SCHEMA})

    rollout_id: str = Field(primary_key=True)
    model: str
    version: int
    state: int
    started_at: datetime = time_column()
    body: bytes = message_column()


class MonitorEventRow(SQLModel, table=True):
    """Drift and degradation events about a version, kept for lineage."""

    __tablename__ = "monitor_events"
    __table_args__ = (sa.Index("monitor_events_model_version", "model", "version"), {"schema": SCHEMA})

    event_id: str = Field(primary_key=True)
    kind: str
    model: str
    version: int
    detected_at: datetime = time_column()
    body: bytes = message_column()
