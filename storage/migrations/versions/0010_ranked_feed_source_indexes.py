"""personalized feed: each candidate source read in order from an index, limit first

Revision ID: 0010_ranked_feed_source_indexes
Revises: 0009_feed_filter_indexes

The ranking's candidates (storage/ranked_feed.py) take the newest ``k_social`` live posts
of each fellow and of each joined collective. ``ix_posts_author_time`` and
``ix_posts_collective_time`` (0001) hold ``(author_id | collective_id, created_at)``
without ``id`` or the live condition, so Postgres read every post of a collective, then
sorted them by ``(created_at, id)`` to keep 250. These partial indexes hold the sort key
``(…, created_at, id)`` of live posts, so each source is a backward index scan that stops
at ``k_social`` rows. Neither holds a counter, so likes and comments stay HOT updates.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010_ranked_feed_source_indexes"
down_revision: str | None = "0009_feed_filter_indexes"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_posts_live_author_created", "posts",
                    ["author_id", "created_at", "id"],
                    postgresql_where=sa.text("deleted_at IS NULL"))
    op.create_index("ix_posts_live_collective_created", "posts",
                    ["collective_id", "created_at", "id"],
                    postgresql_where=sa.text("deleted_at IS NULL AND collective_id IS NOT NULL"))


def downgrade() -> None:
    op.drop_index("ix_posts_live_collective_created", table_name="posts")
    op.drop_index("ix_posts_live_author_created", table_name="posts")
