"""a version's request for a new model (models trained outside the platform)

When a model's spec says `training.external`, an alarm whose policy asks for a retrain asks for a
new model instead: the version's state records when and why.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

SCHEMA = "monitor"

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "version_state",
        sa.Column("new_model_needed_at", sa.DateTime(timezone=True), nullable=True),
        schema=SCHEMA,
    )
    op.add_column("version_state", sa.Column("new_model_reason", sa.Text(), nullable=True), schema=SCHEMA)


def downgrade() -> None:
    op.drop_column("version_state", "new_model_reason", schema=SCHEMA)
    op.drop_column("version_state", "new_model_needed_at", schema=SCHEMA)
