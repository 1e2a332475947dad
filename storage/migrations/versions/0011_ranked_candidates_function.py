"""personalized feed: the candidate query as a function with its planner settings

Revision ID: 0011_ranked_candidates_function
Revises: 0010_ranked_feed_source_indexes

``ranked_candidates(...)`` returns the ranking's candidates packed in one bytea (the
sources, columns and packing of ``storage/ranked_feed.py``'s module docstring). It carries
the planner settings the query needs as the function's own ``SET`` clauses, in force while
it runs and planned under them: no parallel workers, ``random_page_cost`` 1.1, and the
generic plan (plpgsql keeps the query's plan per connection). Sent before as a settings
statement and the query in one transaction, they cost more than the query's own client
work (measured in docs/operations.md, "Read sessions"). A change to the query is a new
migration (``CREATE OR REPLACE FUNCTION``).
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0011_ranked_candidates_function"
down_revision: str | None = "0010_ranked_feed_source_indexes"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# What the score needs (and the order's tie-breaks), and who may be a candidate: live,
# author not blocked, collective not muted; ALLOWED adds public or a joined collective
# (every collective for an admin).
COLUMNS = "p.id, p.author_id, p.post_type, p.collective_id, p.created_at, p.engagement"
LIVE = """p.deleted_at IS NULL
        AND NOT (p.author_id = ANY(CAST(p_blocked AS bigint[])))
        AND NOT coalesce(p.collective_id = ANY(CAST(p_muted AS bigint[])), false)"""
ALLOWED = f"""{LIVE}
        AND (p.collective_id IS NULL OR CAST(p_admin AS boolean)
        OR p.collective_id = ANY(CAST(p_colls AS bigint[])))"""


def newest_per(column: str, ids: str, allowed: str) -> str:
    """The ``p_k_social`` newest ``allowed`` posts whose ``column`` is in ``ids``: the
    newest k of each id (a backward scan of its migration-0010 index, stopping at k), then
    the newest k of those."""
    return f"""(SELECT {COLUMNS} FROM unnest(CAST({ids} AS bigint[])) AS s(v)
        CROSS JOIN LATERAL (SELECT {COLUMNS} FROM posts p
        WHERE p.{column} = s.v AND {allowed}
        ORDER BY p.created_at DESC, p.id DESC LIMIT p_k_social) p
        ORDER BY p.created_at DESC, p.id DESC LIMIT p_k_social)"""


QUERY = f"""
        SELECT coalesce(string_agg(int8send(r.id) || int8send(r.author_id)
        || int8send(r.collective_id) || timestamptz_send(r.created_at)
        || float8send(r.engagement) || boolsend(r.viewed) || float8send(r.post_type),
        ''::bytea), ''::bytea)
        FROM (SELECT c.id, c.author_id, coalesce(c.collective_id, 0) AS collective_id,
        c.created_at, c.engagement,
        c.id IN (SELECT v.post_id FROM post_views v WHERE v.viewer_id = p_viewer) AS viewed,
        coalesce((CAST(p_type_values AS float8[]))[array_position(CAST(p_types AS text[]),
        c.post_type::text)], 0) AS post_type
        FROM ((SELECT {COLUMNS} FROM posts p WHERE {ALLOWED}
        ORDER BY p.created_at DESC, p.id DESC LIMIT p_k_recent)
        UNION ALL {newest_per("author_id", "p_fellows", ALLOWED)}
        UNION ALL {newest_per("collective_id", "p_colls", LIVE)}) c) r
"""


def upgrade() -> None:
    op.execute(
        "CREATE FUNCTION ranked_candidates(p_viewer bigint, p_fellows bigint[], "
        "p_colls bigint[], p_blocked bigint[], p_muted bigint[], p_k_recent integer, "
        "p_k_social integer, p_admin boolean, p_types text[], p_type_values float8[]) "
        "RETURNS bytea LANGUAGE plpgsql STABLE "
        "SET max_parallel_workers_per_gather = 0 SET random_page_cost = 1.1 "
        "SET plan_cache_mode = force_generic_plan "
        f"AS $fn$ BEGIN RETURN ({QUERY}); END $fn$")


def downgrade() -> None:
    op.execute("DROP FUNCTION ranked_candidates(bigint, bigint[], bigint[], bigint[], "
               "bigint[], integer, integer, boolean, text[], float8[])")
