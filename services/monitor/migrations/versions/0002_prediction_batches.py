"""predictions kept per logged batch

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
import sqlmodel
from alembic import op
from sqlalchemy import Float, Text
from sqlalchemy.dialects import postgresql

SCHEMA = "monitor"

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("predictions_request", table_name="predictions", schema=SCHEMA)
    op.drop_index("predictions_logged_at", table_name="predictions", schema=SCHEMA, postgresql_using="brin")
    op.drop_table("predictions", schema=SCHEMA)
    op.create_table(
        "prediction_batches",
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column("model", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("logged_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("request_ids", postgresql.ARRAY(Text()), nullable=False),
        sa.Column("timestamps", postgresql.ARRAY(Float()), nullable=False),
        sa.Column("labels", postgresql.ARRAY(Text()), nullable=True),
        sa.Column("predictions", postgresql.ARRAY(Float()), nullable=True),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("features", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        schema=SCHEMA,
    )
    op.create_index(
        "prediction_batches_request_ids",
        "prediction_batches",
        ["request_ids"],
        unique=False,
        schema=SCHEMA,
        postgresql_using="gin",
    )
    op.create_index(
        "prediction_batches_logged_at",
        "prediction_batches",
        ["logged_at"],
        unique=False,
        schema=SCHEMA,
        postgresql_using="brin",
    )
    op.create_index(
        "prediction_batches_model_version",
        "prediction_batches",
        ["model", "version", "logged_at"],
        unique=False,
        schema=SCHEMA,
    )


def downgrade() -> None:
    op.drop_table("prediction_batches", schema=SCHEMA)
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
        "predictions_request", "predictions", ["model", "request_id"], unique=False, schema=SCHEMA
    )
    op.create_index(
        "predictions_logged_at",
        "predictions",
        ["logged_at"],
        unique=False,
        schema=SCHEMA,
        postgresql_using="brin",
    )
