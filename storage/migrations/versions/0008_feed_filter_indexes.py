"""community feed: filtered walks answered by an index (an asset type's live posts by time)

Revision ID: 0008_feed_filter_indexes
Revises: 0007_trending_tails

A ``recent`` / ``following`` page filtered by ``asset_type`` reads this index's range
``(asset_type, created_at, id) < cursor`` in order; a ``tags`` filter is answered by the
GIN index on ``tags`` (``ix_posts_tags``, 0001), which finds the matching posts without
reading the others (see storage/posts.py ``matching_keys``); ``posts_any_tagged`` asks
that index alone whether any live post has the tags (``any_match``).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008_feed_filter_indexes"
down_revision: str | None = "0007_trending_tails"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


# Whether a live post has all of ``tags`` (and the asset type, if not NULL), read from the
# GIN index only: as a plain ``... LIMIT 1`` the planner expects an early match from a
# sequential scan, which reads the whole table when nothing matches (200 ms at 100k posts);
# a bitmap over the GIN index costs the matching entries only.
ANY_TAGGED = """
CREATE FUNCTION posts_any_tagged(want varchar[], asset text) RETURNS boolean
LANGUAGE sql STABLE PARALLEL SAFE
SET enable_seqscan = off SET enable_indexscan = off
AS $$
  SELECT EXISTS (SELECT 1 FROM posts
                 WHERE tags @> want AND deleted_at IS NULL
                   AND (asset IS NULL OR asset_type = asset))
$$
"""


def upgrade() -> None:
    op.create_index("ix_posts_live_asset_time", "posts", ["asset_type", "created_at", "id"],
                    postgresql_where=sa.text("deleted_at IS NULL"))
    op.execute(ANY_TAGGED)


def downgrade() -> None:
    op.execute("DROP FUNCTION posts_any_tagged(varchar[], text)")
    op.drop_index("ix_posts_live_asset_time", table_name="posts")
