"""evaluator tables, inbox and outbox

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
import sqlmodel
from alembic import op

from mlops.bus import create_bus_tables, drop_bus_tables

SCHEMA = "evaluator"

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_bus_tables(op, SCHEMA)
    op.create_table(
        "evaluations",
        sa.Column("evaluation_id", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("model", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("passed", sa.Boolean(), nullable=False),
        sa.Column("evaluated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("body", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("evaluation_id"),
        schema=SCHEMA,
    )
    op.create_index(
        "evaluations_model_version", "evaluations", ["model", "version"], unique=False, schema=SCHEMA
    )


def downgrade() -> None:
    op.drop_index("evaluations_model_version", table_name="evaluations", schema=SCHEMA)
    op.drop_table("evaluations", schema=SCHEMA)
    drop_bus_tables(op, SCHEMA)
