"""trainer jobs, inbox and outbox

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
import sqlmodel
from alembic import op

from mlops.bus import create_bus_tables, drop_bus_tables

SCHEMA = "trainer"

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_bus_tables(op, SCHEMA)
    op.create_table(
        "training_jobs",
        sa.Column("job_id", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("model", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("spec_version", sa.Integer(), nullable=False),
        sa.Column("dataset", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("dataset_version", sa.Integer(), nullable=False),
        sa.Column("dataset_sha256", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("dataset_uri", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("dataset_format", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("spec", sa.LargeBinary(), nullable=False),
        sa.Column("trigger", sa.Integer(), nullable=False),
        sa.Column("trigger_event_id", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("trace_context", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("status", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("announced", sa.Boolean(), nullable=False),
        sa.Column("worker", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("model_version", sa.Integer(), nullable=False),
        sa.Column("failed_stage", sa.Integer(), nullable=False),
        sa.Column("error", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("lane", sqlmodel.sql.sqltypes.AutoString(), server_default="", nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.PrimaryKeyConstraint("job_id"),
        sa.UniqueConstraint("model", "spec_version", "dataset", "dataset_sha256", name="training_jobs_key"),
        schema="trainer",
    )
    op.create_index(
        "training_jobs_claimable",
        "training_jobs",
        ["lane", "status", "lease_until", "created_at"],
        unique=False,
        schema="trainer",
    )


def downgrade() -> None:
    op.drop_index("training_jobs_claimable", table_name="training_jobs", schema="trainer")
    op.drop_table("training_jobs", schema="trainer")
    drop_bus_tables(op, SCHEMA)
