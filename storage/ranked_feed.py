"""SQL of the personalized feed (API.md section 4): the facts its score is computed from,
the posts a page shows, and the viewer's writes (praise, trophies, fellows, collectives,
preferences). Hearts are community likes: ``service.community_feed_ops.like_post`` writes them.

Candidate bound: a viewer's ranking considers at most ``k_recent`` newest live posts plus
the ``k_social`` newest live posts by their fellows plus the ``k_social`` newest live posts
in their collectives (blocked authors, muted collectives and collectives the viewer is not
in excluded inside each source),
so a ranking costs O(k_recent + 2·k_social) rows whatever the size of ``posts``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sqlalchemy import cast, delete, func, select, text
from sqlalchemy.dialects.postgresql import JSONB, insert
from sqlalchemy.orm import Session

from storage.db import DB_QUERIES
from storage.models import (
    Collective,
    CollectiveMember,
    Fellow,
    Post,
    PostPraise,
    PostTrophy,
    RankingConfig,
    UserPreferences,
)
from storage.posts import Counted, add_to_counter, can_see

POST_COLUMNS = (
    "p.id, p.author_id, u.display_name AS author_display_name, "
    "u.avatar_url AS author_avatar_url, u.subscription_tier AS author_tier, "
    "p.title, p.description, "
    "p.tags, p.post_type, p.asset_type, p.asset_url, p.collective_id, p.show_prompt, "
    "p.prompt, p.is_featured, p.inspired_by_post_id, p.like_count, p.comment_count, "
    "p.view_count, p.praise_count, p.trophy_count, p.created_at, p.updated_at"
)

# Posts the viewer may see: live, author not blocked, collective not muted, and public or
# in a collective the viewer belongs to (unless ``:admin``: admins see every collective).
_MEMBER = (
    "(p.collective_id IS NULL OR CAST(:admin AS boolean) OR EXISTS (SELECT 1 FROM "
    "collective_members cm WHERE cm.collective_id = p.collective_id "
    "AND cm.user_id = :viewer))"
)
_VISIBLE = (
    "p.deleted_at IS NULL "
    "AND NOT coalesce(p.author_id = ANY(up.blocked_users), false) "
    "AND NOT coalesce(p.collective_id = ANY(up.muted_collectives), false) "
    f"AND {_MEMBER}"
)
_PREFS_JOIN = "LEFT JOIN user_preferences up ON up.user_id = :viewer"


@dataclass(frozen=True)
class Preferences:
    preferred_post_types: list[str]
    muted_collectives: list[int]
    blocked_users: list[int]
    preferred_artist_types: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, list]:
        return {
            "preferred_post_types": self.preferred_post_types,
            "preferred_artist_types": self.preferred_artist_types,
            "muted_collectives": self.muted_collectives,
            "blocked_users": self.blocked_users,
        }


EMPTY_PREFERENCES = Preferences([], [], [], [])


# --- per-viewer inputs ---------------------------------------------------------------------


def load_fellows(session: Session, user_id: int) -> list[int]:
    return sorted(session.execute(
        select(Fellow.fellow_id).where(Fellow.user_id == user_id)
    ).scalars())


def load_collectives(session: Session, user_id: int) -> list[int]:
    return sorted(session.execute(
        select(CollectiveMember.collective_id).where(CollectiveMember.user_id == user_id)
    ).scalars())


_STATS = text(
    "SELECT author_id, post_type, hearts + praises + trophies AS n "
    "FROM user_post_preferences WHERE user_id = :u AND hearts + praises + trophies > 0"
)


def load_interaction_stats(session: Session, user_id: int) -> tuple[dict[int, int],
                                                                     dict[str, int]]:
    """The viewer's hearts + praise + trophies, per author and per post type, from
    ``user_post_preferences`` (kept by the fact tables' triggers, migration 0008)."""
    by_author: dict[int, int] = {}
    by_type: dict[str, int] = {}
    for author_id, post_type, n in session.execute(_STATS, {"u": user_id}):
        by_author[author_id] = by_author.get(author_id, 0) + n
        by_type[post_type] = by_type.get(post_type, 0) + n
    return by_author, by_type


def load_preferences(session: Session, user_id: int) -> Preferences:
    row = session.get(UserPreferences, user_id)
    if row is None:
        return EMPTY_PREFERENCES
    return Preferences(list(row.preferred_post_types), list(row.muted_collectives),
                       list(row.blocked_users), list(row.preferred_artist_types))


_INPUTS = text(
    "SELECT ARRAY(SELECT fellow_id FROM fellows WHERE user_id = :u ORDER BY 1) AS fellows, "
    "ARRAY(SELECT collective_id FROM collective_members WHERE user_id = :u ORDER BY 1) "
    "AS colls, "
    + ", ".join(
        f"ARRAY(SELECT {column} FROM user_post_preferences WHERE user_id = :u "
        "AND hearts + praises + trophies > 0 ORDER BY author_id, post_type) AS " + name
        for column, name in (("author_id", "s_author"), ("post_type", "s_type"),
                             ("hearts + praises + trophies", "s_n")))
    + ", up.preferred_post_types, up.muted_collectives, up.blocked_users, "
    "up.preferred_artist_types "
    "FROM (SELECT 1) one LEFT JOIN user_preferences up ON up.user_id = :u"
)


@dataclass(frozen=True)
class RankingInputs:
    """Every per-viewer input of the ranking, as the four loaders above give them."""

    fellows: list[int]
    collectives: list[int]
    by_author: dict[int, int]
    by_type: dict[str, int]
    preferences: Preferences


def load_inputs(session: Session, user_id: int) -> RankingInputs:
    """``load_fellows``, ``load_collectives``, ``load_interaction_stats`` and
    ``load_preferences`` of ``user_id`` in one statement (one round trip, one snapshot)."""
    row = session.execute(_INPUTS, {"u": user_id}).one()
    by_author: dict[int, int] = {}
    by_type: dict[str, int] = {}
    for author_id, post_type, n in zip(row.s_author, row.s_type, row.s_n, strict=True):
        by_author[author_id] = by_author.get(author_id, 0) + n
        by_type[post_type] = by_type.get(post_type, 0) + n
    prefs = EMPTY_PREFERENCES if row.preferred_post_types is None else Preferences(
        list(row.preferred_post_types), list(row.muted_collectives),
        list(row.blocked_users), list(row.preferred_artist_types))
    return RankingInputs(list(row.fellows), list(row.colls), by_author, by_type, prefs)


# The candidates come from the SQL function ``ranked_candidates`` (migration 0011, where
# its query is): the sources concatenated (UNION ALL: no sort or hash over the rows; a post
# found by two sources comes twice, with the same values, and the caller keeps one), each
# read backwards from its ``(…, created_at, id)`` index of live posts (migration 0010) and
# stopping at its limit. Every column is a number: created_at as it is stored
# (``timestamptz_send``: int8 microseconds since 2000-01-01 UTC, exact), the viewed flag
# (one hashed read of the viewer's post_views rows) and the post_type component, looked up
# in the viewer's values per type; a joined collective's posts need no membership test.
# The rows come back as ONE bytea, each row ``CANDIDATE_ROW`` (the types' binary send
# format, big-endian), which numpy reads without a Python object per value. The function
# holds the query's planner settings as its own SET clauses: no parallel workers (starting
# them costs more than the query takes); random_page_cost 1.1, as on an SSD or a cached
# table (with the server default, 4, the planner read every post of a collective with a
# bitmap scan and sorted them rather than read the newest k through the ordered index);
# and the generic plan, kept per connection by plpgsql (its shape is the same for every
# viewer, each source an ordered index scan under a LIMIT).
_CANDIDATES = (
    "SELECT ranked_candidates(%(viewer)s, %(fellows)s, %(colls)s, %(blocked)s, %(muted)s, "
    "%(k_recent)s, %(k_social)s, %(admin)s, %(types)s, %(type_values)s)"
)
# One candidate as ``ranked_candidates`` packs it (49 bytes; ``created_us`` counted from
# Postgres's epoch, 2000-01-01, until ``load_candidates`` moves it to the Unix epoch).
PG_EPOCH_US = 946_684_800_000_000
CANDIDATE_ROW = np.dtype([("id", ">i8"), ("author_id", ">i8"), ("collective_id", ">i8"),
                          ("created_us", ">i8"), ("engagement", ">f8"), ("viewed", "?"),
                          ("post_type", ">f8")])


def load_candidates(
    session: Session,
    *,
    viewer: int,
    fellows: Sequence[int],
    collectives: Sequence[int],
    blocked: Sequence[int],
    muted: Sequence[int],
    type_values: Mapping[str, float],
    k_recent: int,
    k_social: int,
    is_admin: bool = False,
) -> np.ndarray:
    """The bounded candidate set (see the module docstring) as ``CANDIDATE_ROW`` records
    ``(id, author_id, collective_id or 0, created_at in µs since the epoch, engagement,
    viewed, type_values[post_type] or 0)``, in no order, a post found by two sources
    twice: public posts and those of the viewer's ``collectives`` (every collective's for
    an admin). One statement on the driver's cursor (psycopg placeholders), one bytea in
    binary format (no number printed, parsed or made a Python object)."""
    conn = session.connection().connection.driver_connection
    types = sorted(type_values)
    with conn.cursor(binary=True) as cursor:
        cursor.execute(_CANDIDATES, {
            "viewer": viewer, "fellows": list(fellows), "colls": list(collectives),
            "blocked": list(blocked), "muted": list(muted), "k_recent": k_recent,
            "k_social": k_social, "admin": is_admin, "types": types,
            "type_values": [float(type_values[t]) for t in types],
        })
        (packed,) = cursor.fetchone()
    DB_QUERIES.inc()  # sent on the driver: counted here
    records = np.frombuffer(bytearray(packed), dtype=CANDIDATE_ROW)  # writable: a copy
    records["created_us"] += PG_EPOCH_US
    return records


# --- what a page shows ---------------------------------------------------------------------


def chronological_page(session: Session, viewer_id: int | None, offset: int, limit: int,
                       is_admin: bool = False) -> tuple[int, list[dict[str, Any]]]:
    """Newest first: (count of posts the viewer may see, the rows of one page). Anonymous
    callers see public posts only."""
    params = {"viewer": viewer_id or 0, "offset": offset, "limit": limit, "admin": is_admin}
    visible = _VISIBLE if viewer_id else "p.deleted_at IS NULL AND p.collective_id IS NULL"
    prefs = _PREFS_JOIN if viewer_id else ""
    count = session.execute(
        text(f"SELECT count(*) FROM posts p {prefs} WHERE {visible}"), params
    ).scalar_one()
    rows = session.execute(
        text(f"SELECT {POST_COLUMNS} FROM posts p LEFT JOIN users u ON u.id = p.author_id "
             f"{prefs} WHERE {visible} ORDER BY p.created_at DESC, p.id DESC "
             "OFFSET :offset LIMIT :limit"),
        params,
    )
    return int(count), [dict(row._mapping) for row in rows]


# --- the viewer's writes -------------------------------------------------------------------


def post_is_live(session: Session, post_id: int) -> bool:
    return session.execute(
        select(Post.id).where(Post.id == post_id, Post.deleted_at.is_(None))
    ).first() is not None


def post_is_visible(session: Session, post_id: int, viewer_id: int, is_admin: bool) -> bool:
    """The post is live and the viewer may see it (public, or in one of their
    collectives, or they are an admin)."""
    return session.execute(
        select(Post.id).where(Post.id == post_id, Post.deleted_at.is_(None),
                              can_see(viewer_id, is_admin))
    ).first() is not None


def _add_fact(session: Session, model: type, counter: str, user_id: int, post_id: int,
              version_names: Sequence[str]) -> Counted:
    """Insert one (post, user) fact; if it is new, raise the post's counter by one in the
    same transaction (the insert's unique key serialises concurrent adds, so it is exact)
    and bump ``version_names`` in that statement."""
    added = session.execute(
        insert(model).values(post_id=post_id, user_id=user_id)
        .on_conflict_do_nothing().returning(model.post_id)
    ).first() is not None
    if not added:
        return Counted(False)
    return add_to_counter(session, post_id, counter, 1, version_names)


def add_praise(session: Session, user_id: int, post_id: int,
               version_names: Sequence[str] = ()) -> Counted:
    return _add_fact(session, PostPraise, "praise_count", user_id, post_id, version_names)


def add_trophy(session: Session, user_id: int, post_id: int,
               version_names: Sequence[str] = ()) -> Counted:
    return _add_fact(session, PostTrophy, "trophy_count", user_id, post_id, version_names)


def add_fellow(session: Session, user_id: int, fellow_id: int) -> bool:
    """Both directions; returns True if either row is new."""
    rows = session.execute(
        insert(Fellow).values([
            {"user_id": user_id, "fellow_id": fellow_id},
            {"user_id": fellow_id, "fellow_id": user_id},
        ]).on_conflict_do_nothing().returning(Fellow.user_id)
    ).all()
    return bool(rows)


def remove_fellow(session: Session, user_id: int, fellow_id: int) -> bool:
    result = session.execute(delete(Fellow).where(
        ((Fellow.user_id == user_id) & (Fellow.fellow_id == fellow_id))
        | ((Fellow.user_id == fellow_id) & (Fellow.fellow_id == user_id))
    ))
    return result.rowcount > 0


def collective_exists(session: Session, collective_id: int) -> bool:
    return session.get(Collective, collective_id) is not None


def unknown_collectives(session: Session, collective_ids: Sequence[int]) -> list[int]:
    if not collective_ids:
        return []
    known = set(session.execute(
        select(Collective.id).where(Collective.id.in_(list(collective_ids)))
    ).scalars())
    return sorted(set(collective_ids) - known)


def join_collective(session: Session, user_id: int, collective_id: int) -> bool:
    return session.execute(
        insert(CollectiveMember).values(collective_id=collective_id, user_id=user_id)
        .on_conflict_do_nothing().returning(CollectiveMember.user_id)
    ).first() is not None


def leave_collective(session: Session, user_id: int, collective_id: int) -> bool:
    result = session.execute(delete(CollectiveMember).where(
        CollectiveMember.collective_id == collective_id, CollectiveMember.user_id == user_id
    ))
    return result.rowcount > 0


def save_preferences(session: Session, user_id: int, changes: dict[str, list]) -> Preferences:
    """Upsert the given fields (others keep their stored value) and return the result."""
    values = {"user_id": user_id, **changes}
    stmt = insert(UserPreferences).values(values)
    stmt = stmt.on_conflict_do_update(
        index_elements=[UserPreferences.user_id],
        set_={**changes, "updated_at": func.now()},
    ).returning(UserPreferences.preferred_post_types, UserPreferences.muted_collectives,
                UserPreferences.blocked_users, UserPreferences.preferred_artist_types)
    row = session.execute(stmt).one()
    return Preferences(list(row[0]), list(row[1]), list(row[2]), list(row[3]))


# --- the admin's ranking controls ----------------------------------------------------------


@dataclass(frozen=True)
class RankingControls:
    """The stored controls: ``weights`` holds only the weights an admin set."""

    enabled: bool
    weights: dict[str, float]
    version: int  # of the cache scope ``rank|config`` (0: never changed)


_CONTROLS = text(
    "SELECT rc.enabled, rc.weights, "
    "(SELECT version FROM cache_versions WHERE name = :name) AS version "
    "FROM (SELECT 1) one LEFT JOIN ranking_config rc ON rc.id = 1"
)


def load_ranking_controls(session: Session, version_name: str) -> RankingControls:
    """The controls and their cache version, read in one statement (one snapshot, so the
    version always matches the values)."""
    row = session.execute(_CONTROLS, {"name": version_name}).one()
    return RankingControls(True if row.enabled is None else bool(row.enabled),
                           {k: float(v) for k, v in (row.weights or {}).items()},
                           int(row.version or 0))


def save_ranking_controls(session: Session, enabled: bool | None,
                          weights: dict[str, float]) -> tuple[bool, dict[str, float]]:
    """Upsert: ``enabled`` if given, ``weights`` merged over the stored ones (the others
    are kept). Returns the stored (enabled, weights)."""
    table = RankingConfig.__table__
    values: dict[str, Any] = {"id": 1, "weights": weights}
    updates: dict[str, Any] = {"weights": table.c.weights.op("||")(cast(weights, JSONB)),
                               "updated_at": func.now()}
    if enabled is not None:
        values["enabled"] = updates["enabled"] = enabled
    stmt = insert(RankingConfig).values(values).on_conflict_do_update(
        index_elements=[RankingConfig.id], set_=updates,
    ).returning(RankingConfig.enabled, RankingConfig.weights)
    row = session.execute(stmt).one()
    return bool(row[0]), {k: float(v) for k, v in row[1].items()}
