"""training jobs count the attempts whose worker process was killed

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "training_jobs",
        sa.Column("worker_kills", sa.Integer(), server_default="0", nullable=False),
        schema="trainer",
    )


def downgrade() -> None:
    op.drop_column("training_jobs", "worker_kills", schema="trainer")
