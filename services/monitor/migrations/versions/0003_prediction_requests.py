"""request ids of stored predictions under a hash index; per-row columns packed

Keeping a GIN index on every batch's request-id array, and building and parsing the per-row
arrays an element at a time, cost more than the rest of ingest. The request ids move to a narrow
table under a hash index; the per-row columns become packed big-endian bytea. Stored batches are
converted in place.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
import sqlmodel
from alembic import op
from sqlalchemy import Float, Text
from sqlalchemy.dialects import postgresql

SCHEMA = "monitor"

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def _packed(expression: str, element: str) -> str:
    """bytea of an array's elements in order, each as PostgreSQL's binary send function writes it."""
    return (
        f"coalesce((SELECT string_agg({element}(x), ''::bytea ORDER BY n) "
        f"FROM unnest({expression}) WITH ORDINALITY AS u(x, n)), ''::bytea)"
    )


def upgrade() -> None:
    op.create_table(
        "prediction_requests",
        sa.Column("request_id", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("batch_id", sa.BigInteger(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        schema=SCHEMA,
    )
    # The first row of each request id in each batch, as array_position found it before.
    op.execute(
        f"INSERT INTO {SCHEMA}.prediction_requests (request_id, batch_id, position) "
        "SELECT request_id, id, min(n) - 1 "
        f"FROM {SCHEMA}.prediction_batches, unnest(request_ids) WITH ORDINALITY AS u(request_id, n) "
        "GROUP BY id, request_id"
    )
    op.create_index(
        "prediction_requests_request_id",
        "prediction_requests",
        ["request_id"],
        unique=False,
        schema=SCHEMA,
        postgresql_using="hash",
    )
    op.create_index(
        "prediction_requests_batch_id",
        "prediction_requests",
        ["batch_id"],
        unique=False,
        schema=SCHEMA,
        postgresql_using="brin",
    )
    op.drop_index(
        "prediction_batches_request_ids",
        table_name="prediction_batches",
        schema=SCHEMA,
        postgresql_using="gin",
    )
    op.add_column("prediction_batches", sa.Column("packed_timestamps", sa.LargeBinary()), schema=SCHEMA)
    op.add_column("prediction_batches", sa.Column("class_labels", postgresql.ARRAY(Text())), schema=SCHEMA)
    op.add_column("prediction_batches", sa.Column("classes", sa.LargeBinary()), schema=SCHEMA)
    op.add_column("prediction_batches", sa.Column("packed_predictions", sa.LargeBinary()), schema=SCHEMA)
    # A batch's classes are the labels it holds, in sorted order; '' (none) becomes -1.
    op.execute(
        f"UPDATE {SCHEMA}.prediction_batches SET "
        f"packed_timestamps = {_packed('timestamps', 'float8send')}, "
        "class_labels = CASE WHEN labels IS NULL THEN NULL ELSE "
        "ARRAY(SELECT DISTINCT x FROM unnest(labels) AS x WHERE x <> '' ORDER BY x) END, "
        f"packed_predictions = CASE WHEN predictions IS NULL THEN NULL ELSE "
        f"{_packed('predictions', 'float8send')} END"
    )
    op.execute(
        f"UPDATE {SCHEMA}.prediction_batches SET classes = "
        f"{_packed('ARRAY(SELECT coalesce(array_position(class_labels, x), 0) - 1 FROM unnest(labels) WITH ORDINALITY AS v(x, m) ORDER BY m)', 'int4send')} "
        "WHERE labels IS NOT NULL"
    )
    op.drop_column("prediction_batches", "request_ids", schema=SCHEMA)
    op.drop_column("prediction_batches", "timestamps", schema=SCHEMA)
    op.drop_column("prediction_batches", "labels", schema=SCHEMA)
    op.drop_column("prediction_batches", "predictions", schema=SCHEMA)
    op.alter_column(
        "prediction_batches",
        "packed_timestamps",
        new_column_name="timestamps",
        nullable=False,
        schema=SCHEMA,
    )
    op.alter_column("prediction_batches", "packed_predictions", new_column_name="predictions", schema=SCHEMA)


def downgrade() -> None:
    # SQL has no way back from packed float8 to a number, so the stored predictions are dropped: the
    # join then finds only predictions logged after the downgrade.
    op.drop_table("prediction_requests", schema=SCHEMA)
    op.execute(f"DELETE FROM {SCHEMA}.prediction_batches")
    op.drop_column("prediction_batches", "timestamps", schema=SCHEMA)
    op.drop_column("prediction_batches", "class_labels", schema=SCHEMA)
    op.drop_column("prediction_batches", "classes", schema=SCHEMA)
    op.drop_column("prediction_batches", "predictions", schema=SCHEMA)
    op.add_column(
        "prediction_batches",
        sa.Column("request_ids", postgresql.ARRAY(Text()), nullable=False),
        schema=SCHEMA,
    )
    op.add_column(
        "prediction_batches",
        sa.Column("timestamps", postgresql.ARRAY(Float()), nullable=False),
        schema=SCHEMA,
    )
    op.add_column("prediction_batches", sa.Column("labels", postgresql.ARRAY(Text())), schema=SCHEMA)
    op.add_column("prediction_batches", sa.Column("predictions", postgresql.ARRAY(Float())), schema=SCHEMA)
    op.create_index(
        "prediction_batches_request_ids",
        "prediction_batches",
        ["request_ids"],
        unique=False,
        schema=SCHEMA,
        postgresql_using="gin",
    )
