"""model versions: where each came from and its artifact's sha256, unique per model for registered ones

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

SCHEMA = "registry"


revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Versions recorded before this revision were all made by the trainer.
    op.add_column(
        "model_versions",
        sa.Column("origin", sa.String(), nullable=False, server_default="trainer"),
        schema=SCHEMA,
    )
    op.add_column(
        "model_versions",
        sa.Column("artifact_sha256", sa.String(), nullable=False, server_default=""),
        schema=SCHEMA,
    )
    # RegisterModel is idempotent on (model, sha256): the same bytes give the same version.
    op.create_index(
        "model_versions_external_sha256",
        "model_versions",
        ["model", "artifact_sha256"],
        unique=True,
        schema=SCHEMA,
        postgresql_where=sa.text("origin = 'external'"),
    )


def downgrade() -> None:
    op.drop_index("model_versions_external_sha256", table_name="model_versions", schema=SCHEMA)
    op.drop_column("model_versions", "artifact_sha256", schema=SCHEMA)
    op.drop_column("model_versions", "origin", schema=SCHEMA)
