"""deployer tables, inbox and outbox

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
import sqlmodel
from alembic import op

from mlops.bus import create_bus_tables, drop_bus_tables

SCHEMA = "deployer"


revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_bus_tables(op, SCHEMA)
    op.create_table(
        "desired_states",
        sa.Column("scope", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("model", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("body", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("scope", "model"),
        schema=SCHEMA,
    )
    op.create_table(
        "rollouts",
        sa.Column("rollout_id", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("scope", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("model", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("candidate_version", sa.Integer(), nullable=False),
        sa.Column("baseline_version", sa.Integer(), nullable=False),
        sa.Column("strategy", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("state", sa.Integer(), nullable=False),
        sa.Column("evaluation_id", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("step_started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("hold", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("moves", sa.Integer(), nullable=False),
        sa.Column("recorded_moves", sa.Integer(), nullable=False),
        sa.Column("traceparent", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("candidate", sa.LargeBinary(), nullable=False),
        sa.Column("baseline", sa.LargeBinary(), nullable=True),
        sa.Column("batching", sa.LargeBinary(), nullable=False),
        sa.Column("body", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("rollout_id"),
        schema=SCHEMA,
    )
    op.create_index(
        op.f("ix_deployer_rollouts_evaluation_id"), "rollouts", ["evaluation_id"], unique=False, schema=SCHEMA
    )
    op.create_index(
        "rollouts_one_running_per_model",
        "rollouts",
        ["scope", "model"],
        unique=True,
        schema=SCHEMA,
        postgresql_where=sa.text("finished_at IS NULL"),
    )
    op.create_index(
        "rollouts_scope_model_started",
        "rollouts",
        ["scope", "model", "started_at"],
        unique=False,
        schema=SCHEMA,
    )


def downgrade() -> None:
    op.drop_index("rollouts_scope_model_started", table_name="rollouts", schema=SCHEMA)
    op.drop_index(
        "rollouts_one_running_per_model",
        table_name="rollouts",
        schema=SCHEMA,
        postgresql_where=sa.text("finished_at IS NULL"),
    )
    op.drop_index(op.f("ix_deployer_rollouts_evaluation_id"), table_name="rollouts", schema=SCHEMA)
    op.drop_table("rollouts", schema=SCHEMA)
    op.drop_table("desired_states", schema=SCHEMA)
    drop_bus_tables(op, SCHEMA)
