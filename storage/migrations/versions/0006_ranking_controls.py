"""personalized feed controls (seed 003, phases 4-6): preferred_artist_types, and the
admin's ranking switch and weights

``ranking_config`` has at most one row (id 1); no row means "enabled, weights from
RANKING_WEIGHTS". ``weights`` holds only the weights an admin set. Its cache version is
the ``cache_versions`` row ``rank|config``, bumped in the same transaction as each change.

Revision ID: 0006_ranking_controls
Revises: 0005_posts_profiles
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0006_ranking_controls"
down_revision: str | Sequence[str] | None = "0005_posts_profiles"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "user_preferences",
        sa.Column("preferred_artist_types", postgresql.ARRAY(sa.String(length=50)),
                  server_default="{}", nullable=False),
    )
    op.create_table(
        "ranking_config",
        sa.Column("id", sa.SmallInteger(), autoincrement=False, nullable=False),
        sa.Column("enabled", sa.Boolean(), server_default="true", nullable=False),
        sa.Column("weights", postgresql.JSONB(astext_type=sa.Text()),
                  server_default=sa.text("'{}'::jsonb"), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"),
                  nullable=False),
        sa.CheckConstraint("id = 1", name=op.f("ck_ranking_config_single_row")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ranking_config")),
    )


def downgrade() -> None:
    op.drop_table("ranking_config")
    op.drop_column("user_preferences", "preferred_artist_types")
