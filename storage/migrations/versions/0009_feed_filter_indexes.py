"""community feed: filtered walks answered by an index (an asset type's live posts by time)

Revision ID: 0009_feed_filter_indexes
Revises: 0008_ranking_inputs

A ``recent`` / ``following`` page filtered by ``asset_type`` reads this index's range
``(asset_type, created_at, id) < cursor`` in order; a ``tags`` filter is answered by the
GIN index on ``tags`` (``ix_posts_tags``, 0001), which finds the matching posts without
reading the others (see storage/posts.py ``matching_keys``); ``posts_tagged_upto``
asks that index alone how many live posts have the tags, up to a cap (``count_upto``).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009_feed_filter_indexes"
down_revision: str | None = "0008_ranking_inputs"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


# How many live posts have all of ``tags`` (and the asset type, if not NULL), up to
# ``cap``, read from the GIN index only: as a plain ``... LIMIT`` the planner expects early
# matches from a sequential scan, which reads the whole table when nothing matches (200 ms
# at 100k posts); a bitmap over the GIN index costs the matching entries only.
TAGGED_UPTO = """
CREATE FUNCTION posts_tagged_upto(want varchar[], asset text, cap integer) RETURNS integer
LANGUAGE sql STABLE PARALLEL SAFE
SET enable_seqscan = off SET enable_indexscan = off
AS $$
  SELECT count(*)::integer FROM (
    SELECT 1 FROM posts
    WHERE tags @> want AND deleted_at IS NULL AND (asset IS NULL OR asset_type = asset)
    LIMIT cap) AS found
$$
"""


def upgrade() -> None:
    op.create_index("ix_posts_live_asset_time", "posts", ["asset_type", "created_at", "id"],
                    postgresql_where=sa.text("deleted_at IS NULL"))
    op.execute(TAGGED_UPTO)
    # New posts' tags go straight into the GIN index, not its pending list: a lookup scans
    # that list entry by entry (60 ms for a tag no post has, after 100k inserts, until a
    # vacuum merged it), and a feed read must not depend on when autovacuum ran.
    op.execute("ALTER INDEX ix_posts_tags SET (fastupdate = off)")
    op.execute("SELECT gin_clean_pending_list('ix_posts_tags')")


def downgrade() -> None:
    op.execute("ALTER INDEX ix_posts_tags RESET (fastupdate)")
    op.execute("DROP FUNCTION posts_tagged_upto(varchar[], text, integer)")
    op.drop_index("ix_posts_live_asset_time", table_name="posts")
