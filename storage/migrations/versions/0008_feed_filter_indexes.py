"""community feed: filtered walks answered by an index (an asset type's live posts by time)

Revision ID: 0008_feed_filter_indexes
Revises: 0007_trending_tails

A ``recent`` / ``following`` page filtered by ``asset_type`` reads this index's range
``(asset_type, created_at, id) < cursor`` in order; a ``tags`` filter is answered by the
GIN index on ``tags`` (``ix_posts_tags``, 0001), which finds the matching posts without
reading the others (see storage/posts.py ``matching_keys``).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008_feed_filter_indexes"
down_revision: str | None = "0007_trending_tails"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_posts_live_asset_time", "posts", ["asset_type", "created_at", "id"],
                    postgresql_where=sa.text("deleted_at IS NULL"))


def downgrade() -> None:
    op.drop_index("ix_posts_live_asset_time", table_name="posts")
