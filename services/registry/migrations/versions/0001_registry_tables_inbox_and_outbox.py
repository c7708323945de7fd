"""registry tables, inbox and outbox

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
import sqlmodel
from alembic import op
from sqlalchemy.dialects import postgresql

from mlops.bus import create_bus_tables, drop_bus_tables

SCHEMA = "registry"

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_bus_tables(op, SCHEMA)
    op.create_table(
        "alias_changes",
        sa.Column("change_id", sa.Integer(), nullable=False),
        sa.Column("model", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("alias", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("from_version", sa.Integer(), nullable=False),
        sa.Column("to_version", sa.Integer(), nullable=False),
        sa.Column("actor", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("reason", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("changed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("change_id"),
        schema="registry",
    )
    op.create_index(
        "alias_changes_model_alias",
        "alias_changes",
        ["model", "alias", "changed_at"],
        unique=False,
        schema="registry",
    )
    op.create_table(
        "aliases",
        sa.Column("model", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("alias", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("updated_by", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("reason", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("model", "alias"),
        schema="registry",
    )
    op.create_table(
        "dataset_versions",
        sa.Column("dataset", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("sha256", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("committed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("body", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("dataset", "version"),
        sa.UniqueConstraint("dataset", "sha256", name="dataset_versions_sha256"),
        schema="registry",
    )
    op.create_table(
        "datasets",
        sa.Column("name", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("latest_version", sa.Integer(), server_default="0", nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.PrimaryKeyConstraint("name"),
        schema="registry",
    )
    op.create_table(
        "deployments",
        sa.Column("rollout_id", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("model", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("state", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("body", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("rollout_id"),
        schema="registry",
    )
    op.create_index(
        "deployments_model_version", "deployments", ["model", "version"], unique=False, schema="registry"
    )
    op.create_table(
        "evaluations",
        sa.Column("evaluation_id", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("model", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("passed", sa.Boolean(), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("body", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("evaluation_id"),
        schema="registry",
    )
    op.create_index(
        "evaluations_model_version", "evaluations", ["model", "version"], unique=False, schema="registry"
    )
    op.create_table(
        "model_specs",
        sa.Column("model", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("dataset", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("sha256", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("labels", postgresql.JSONB(astext_type=sa.Text()), server_default="{}", nullable=False),
        sa.Column("applied_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("body", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("model", "version"),
        schema="registry",
    )
    op.create_index(
        op.f("ix_registry_model_specs_dataset"), "model_specs", ["dataset"], unique=False, schema="registry"
    )
    op.create_table(
        "model_versions",
        sa.Column("model", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("run_id", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("dataset", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("dataset_version", sa.Integer(), nullable=False),
        sa.Column("metrics", postgresql.JSONB(astext_type=sa.Text()), server_default="{}", nullable=False),
        sa.Column("tags", postgresql.JSONB(astext_type=sa.Text()), server_default="{}", nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("body", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("model", "version"),
        schema="registry",
    )
    op.create_index(
        "model_versions_dataset",
        "model_versions",
        ["dataset", "dataset_version"],
        unique=False,
        schema="registry",
    )
    op.create_index(
        "model_versions_run",
        "model_versions",
        ["model", "run_id"],
        unique=True,
        schema="registry",
        postgresql_where=sa.text("run_id <> ''"),
    )
    op.create_table(
        "models",
        sa.Column("name", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("latest_version", sa.Integer(), server_default="0", nullable=False),
        sa.Column("latest_spec_version", sa.Integer(), server_default="0", nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.PrimaryKeyConstraint("name"),
        schema="registry",
    )
    op.create_table(
        "monitor_events",
        sa.Column("event_id", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("kind", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("model", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("detected_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("body", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("event_id"),
        schema="registry",
    )
    op.create_index(
        "monitor_events_model_version",
        "monitor_events",
        ["model", "version"],
        unique=False,
        schema="registry",
    )
    op.create_table(
        "run_epochs",
        sa.Column("run_id", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("epoch", sa.Integer(), nullable=False),
        sa.Column("body", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("run_id", "epoch"),
        schema="registry",
    )
    op.create_table(
        "runs",
        sa.Column("run_id", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("model", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("status", sa.Integer(), nullable=False),
        sa.Column("dataset", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("dataset_version", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("body", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("run_id"),
        schema="registry",
    )
    op.create_index("runs_model_started", "runs", ["model", "started_at"], unique=False, schema="registry")


def downgrade() -> None:
    op.drop_index("runs_model_started", table_name="runs", schema="registry")
    op.drop_table("runs", schema="registry")
    op.drop_table("run_epochs", schema="registry")
    op.drop_index("monitor_events_model_version", table_name="monitor_events", schema="registry")
    op.drop_table("monitor_events", schema="registry")
    op.drop_table("models", schema="registry")
    op.drop_index("model_versions_dataset", table_name="model_versions", schema="registry")
    op.drop_table("model_versions", schema="registry")
    op.drop_index(op.f("ix_registry_model_specs_dataset"), table_name="model_specs", schema="registry")
    op.drop_table("model_specs", schema="registry")
    op.drop_index("evaluations_model_version", table_name="evaluations", schema="registry")
    op.drop_table("evaluations", schema="registry")
    op.drop_index("deployments_model_version", table_name="deployments", schema="registry")
    op.drop_table("deployments", schema="registry")
    op.drop_table("datasets", schema="registry")
    op.drop_table("dataset_versions", schema="registry")
    op.drop_table("aliases", schema="registry")
    op.drop_index("alias_changes_model_alias", table_name="alias_changes", schema="registry")
    op.drop_table("alias_changes", schema="registry")
    drop_bus_tables(op, SCHEMA)
