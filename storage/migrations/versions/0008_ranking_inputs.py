"""personalized feed: its score's inputs kept ready by the writes that change them

``posts.engagement`` (seed 003's PostScore): the engagement component, a stored generated
column over the post's counters, so it changes in the statement that changes them.

``user_post_preferences`` (seed 003's UserPostPreference): per (viewer, author, post type)
the viewer's hearts (likes), praise and trophies on that author's posts of that type.
Statement-level triggers on ``post_likes``, ``post_praises`` and ``post_trophies`` keep it
in the inserting or deleting transaction (bulk loads pay one upsert per group, not per
row); the rows are backfilled from the facts here.

Revision ID: 0008_ranking_inputs
Revises: 0007_trending_tails
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008_ranking_inputs"
down_revision: str | None = "0007_trending_tails"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ENGAGEMENT = ("LEAST((like_count + 2 * praise_count + 5 * trophy_count)::double precision "
              "+ 0.5 * comment_count::double precision, 50)")
FACTS = (("post_likes", "hearts"), ("post_praises", "praises"), ("post_trophies", "trophies"))

APPLY = """
CREATE FUNCTION ranking_inputs_apply() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    counter text := TG_ARGV[0];
    delta int := CASE TG_OP WHEN 'INSERT' THEN 1 ELSE -1 END;
BEGIN
    -- Sorted groups: concurrent statements lock the rows in one order.
    EXECUTE format(
        'INSERT INTO user_post_preferences AS u (user_id, author_id, post_type, %1$I) '
        'SELECT c.user_id, p.author_id, p.post_type, $1 * count(*) '
        'FROM changed c JOIN posts p ON p.id = c.post_id '
        'GROUP BY 1, 2, 3 ORDER BY 1, 2, 3 '
        'ON CONFLICT (user_id, author_id, post_type) '
        'DO UPDATE SET %1$I = u.%1$I + EXCLUDED.%1$I', counter) USING delta;
    RETURN NULL;
END $$;
"""


def upgrade() -> None:
    op.execute(f"ALTER TABLE posts ADD COLUMN engagement double precision "
               f"GENERATED ALWAYS AS ({ENGAGEMENT}) STORED")
    op.create_table(
        "user_post_preferences",
        sa.Column("user_id", sa.BigInteger(), nullable=False),
        sa.Column("author_id", sa.BigInteger(), nullable=False),
        sa.Column("post_type", sa.String(50), nullable=False),
        sa.Column("hearts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("praises", sa.Integer(), server_default="0", nullable=False),
        sa.Column("trophies", sa.Integer(), server_default="0", nullable=False),
        sa.PrimaryKeyConstraint("user_id", "author_id", "post_type"),
    )
    op.execute(APPLY)
    for table, counter in FACTS:
        for event, transition in (("INSERT", "NEW"), ("DELETE", "OLD")):
            op.execute(
                f"CREATE TRIGGER {table}_ranking_{event.lower()} AFTER {event} ON {table} "
                f"REFERENCING {transition} TABLE AS changed FOR EACH STATEMENT "
                f"EXECUTE FUNCTION ranking_inputs_apply('{counter}')")
    op.execute(
        "INSERT INTO user_post_preferences (user_id, author_id, post_type, hearts, praises, "
        "trophies) SELECT f.user_id, p.author_id, p.post_type, "
        "count(*) FILTER (WHERE f.kind = 1), count(*) FILTER (WHERE f.kind = 2), "
        "count(*) FILTER (WHERE f.kind = 3) FROM ("
        " SELECT post_id, user_id, 1 AS kind FROM post_likes"
        " UNION ALL SELECT post_id, user_id, 2 FROM post_praises"
        " UNION ALL SELECT post_id, user_id, 3 FROM post_trophies"
        ") f JOIN posts p ON p.id = f.post_id GROUP BY 1, 2, 3")


def downgrade() -> None:
    for table, _ in FACTS:
        for event in ("insert", "delete"):
            op.execute(f"DROP TRIGGER {table}_ranking_{event} ON {table}")
    op.execute("DROP FUNCTION ranking_inputs_apply()")
    op.drop_table("user_post_preferences")
    op.drop_column("posts", "engagement")
