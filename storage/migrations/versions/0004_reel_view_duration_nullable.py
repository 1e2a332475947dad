"""reels: a view's duration may be unknown (null) instead of 0

A view sent without ``view_duration`` keeps the last known duration, and a first view
without one stores null (API.md section 5). Existing rows keep their value.

Revision ID: 0004_reel_view_duration_nullable
Revises: 0003_merge_heads
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004_reel_view_duration_nullable"
down_revision: str | Sequence[str] | None = "0003_merge_heads"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.alter_column("reel_views", "view_duration", existing_type=sa.Integer(),
                    nullable=True, server_default=None)


def downgrade() -> None:
    op.execute("UPDATE reel_views SET view_duration = 0 WHERE view_duration IS NULL")
    op.alter_column("reel_views", "view_duration", existing_type=sa.Integer(),
                    nullable=False, server_default="0")
