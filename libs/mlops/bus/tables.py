"""The inbox and outbox tables that every service keeps in its own schema.

A service's first migration calls `create_bus_tables(op, schema)`.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from mlops.db.migrations import create_schema_sql


def create_bus_tables(op, schema: str) -> None:
    op.execute(sa.text(create_schema_sql(schema)))
    op.create_table(
        "inbox",
        sa.Column("consumer", sa.Text, primary_key=True, comment="consumer group that handled the event"),
        sa.Column("event_id", sa.Text, primary_key=True, comment="CloudEvents ce_id"),
        sa.Column("handled_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        schema=schema,
    )
    op.create_index("inbox_handled_at", "inbox", ["handled_at"], schema=schema)
    op.create_table(
        "outbox",
        sa.Column("id", sa.BigInteger, sa.Identity(always=True), primary_key=True),
        sa.Column("topic", sa.Text, nullable=False),
        sa.Column("key", sa.LargeBinary, nullable=True),
        sa.Column("value", sa.LargeBinary, nullable=False),
        sa.Column("headers", postgresql.JSONB, nullable=False, comment="[[name, value], ...] as text"),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        schema=schema,
    )


def drop_bus_tables(op, schema: str) -> None:
    op.drop_table("outbox", schema=schema)
    op.drop_index("inbox_handled_at", table_name="inbox", schema=schema)
    op.drop_table("inbox", schema=schema)
