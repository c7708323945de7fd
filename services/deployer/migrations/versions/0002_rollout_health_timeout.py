"""rollouts: the health timeout, what to do when it passes, and when the last verdict came

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

SCHEMA = "deployer"


revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Rollouts that started before these columns existed get the spec's defaults.
    op.add_column(
        "rollouts",
        sa.Column("health_timeout_seconds", sa.Integer(), nullable=False, server_default="120"),
        schema=SCHEMA,
    )
    op.add_column(
        "rollouts",
        sa.Column("on_health_timeout", sa.String(), nullable=False, server_default="rollback"),
        schema=SCHEMA,
    )
    op.add_column(
        "rollouts", sa.Column("verdict_at", sa.DateTime(timezone=True), nullable=True), schema=SCHEMA
    )


def downgrade() -> None:
    op.drop_column("rollouts", "verdict_at", schema=SCHEMA)
    op.drop_column("rollouts", "on_health_timeout", schema=SCHEMA)
    op.drop_column("rollouts", "health_timeout_seconds", schema=SCHEMA)
