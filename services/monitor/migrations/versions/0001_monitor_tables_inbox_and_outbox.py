"""monitor tables, inbox and outbox

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
import sqlmodel
from alembic import op
from sqlalchemy import Float, Text
from sqlalchemy.dialects import postgresql

from mlops.bus import create_bus_tables, drop_bus_tables

SCHEMA = "monitor"

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_bus_tables(op, SCHEMA)
    op.create_table(
        "labels",
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column("model", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("request_id", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("label", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("value", sa.Float(), nullable=True),
        sa.Column("observed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("matched", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        schema=SCHEMA,
    )
    op.create_index(
        "labels_pending",
        "labels",
        ["received_at"],
        unique=False,
        schema=SCHEMA,
        postgresql_where=sa.text("NOT matched"),
    )
    op.create_index("labels_request", "labels", ["model", "request_id"], unique=False, schema=SCHEMA)
    op.create_table(
        "offsets",
        sa.Column("consumer_group", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("topic", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("partition", sa.Integer(), nullable=False),
        sa.Column("next_offset", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("consumer_group", "topic", "partition"),
        schema=SCHEMA,
    )
    op.create_table(
        "performance_windows",
        sa.Column("model", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("window_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("window_end", sa.DateTime(timezone=True), nullable=False),
        sa.Column("labelled", sa.BigInteger(), nullable=False),
        sa.Column("correct", sa.BigInteger(), nullable=False),
        sa.Column("sum_squared_error", sa.Float(), nullable=False),
        sa.Column("sum_absolute_error", sa.Float(), nullable=False),
        sa.Column("sum_truth", sa.Float(), nullable=False),
        sa.Column("sum_truth_squared", sa.Float(), nullable=False),
        sa.Column("closed", sa.Boolean(), nullable=False),
        sa.Column("metrics", postgresql.JSONB(astext_type=Text()), server_default="{}", nullable=False),
        sa.PrimaryKeyConstraint("model", "version", "window_start"),
        schema=SCHEMA,
    )
    op.create_table(
        "predictions",
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column("model", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("request_id", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("logged_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("label", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("value", sa.Float(), nullable=True),
        sa.Column("features", postgresql.ARRAY(Float()), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        schema=SCHEMA,
    )
    op.create_index(
        "predictions_logged_at",
        "predictions",
        ["logged_at"],
        unique=False,
        schema=SCHEMA,
        postgresql_using="brin",
    )
    op.create_index(
        "predictions_request", "predictions", ["model", "request_id"], unique=False, schema=SCHEMA
    )
    op.create_table(
        "version_state",
        sa.Column("model", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("consecutive", sa.Integer(), nullable=False),
        sa.Column("last_alarm_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("degraded_windows", sa.Integer(), nullable=False),
        sa.Column("last_degradation_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("live_metrics", postgresql.JSONB(astext_type=Text()), server_default="{}", nullable=False),
        sa.PrimaryKeyConstraint("model", "version"),
        schema=SCHEMA,
    )
    op.create_table(
        "windows",
        sa.Column("consumer_group", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("model", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("window_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("window_end", sa.DateTime(timezone=True), nullable=False),
        sa.Column("partition", sa.Integer(), nullable=False),
        sa.Column("sample_count", sa.BigInteger(), nullable=False),
        sa.Column("late_count", sa.BigInteger(), nullable=False),
        sa.Column("counts", sa.LargeBinary(), nullable=False),
        sa.Column("links", postgresql.JSONB(astext_type=Text()), server_default="[]", nullable=False),
        sa.Column("profile_sha256", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("closed", sa.Boolean(), nullable=False),
        sa.Column("drifted", sa.Boolean(), nullable=False),
        sa.Column("body", sa.LargeBinary(), nullable=True),
        sa.PrimaryKeyConstraint("consumer_group", "model", "version", "window_start"),
        schema=SCHEMA,
    )
    op.create_index("windows_model_closed", "windows", ["model", "closed"], unique=False, schema=SCHEMA)


def downgrade() -> None:
    op.drop_index("windows_model_closed", table_name="windows", schema=SCHEMA)
    op.drop_table("windows", schema=SCHEMA)
    op.drop_table("version_state", schema=SCHEMA)
    op.drop_index("predictions_request", table_name="predictions", schema=SCHEMA)
    op.drop_index("predictions_logged_at", table_name="predictions", schema=SCHEMA, postgresql_using="brin")
    op.drop_table("predictions", schema=SCHEMA)
    op.drop_table("performance_windows", schema=SCHEMA)
    op.drop_table("offsets", schema=SCHEMA)
    op.drop_index("labels_request", table_name="labels", schema=SCHEMA)
    op.drop_index(
        "labels_pending", table_name="labels", schema=SCHEMA, postgresql_where=sa.text("NOT matched")
    )
    op.drop_table("labels", schema=SCHEMA)
    drop_bus_tables(op, SCHEMA)
