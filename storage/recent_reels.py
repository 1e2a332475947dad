"""SQL of the reels slice: reels, each user's newest-N view list (``reel_views``), likes.

Times are whole milliseconds since the epoch everywhere in this slice: ``viewed_at`` is
stored truncated to the millisecond, so the Redis score (``cache.recent_reels``) and the
Postgres value are the same number and both sides order views identically.

Order of a user's list: newest ``viewed_at`` first; ties (two views in one millisecond,
or a batch giving equal ``viewed_at``) are broken by the reel id's *decimal text*,
byte-wise descending, because that is how Redis orders equal scores in a sorted set.
Postgres and Redis therefore agree on every page and on which row the cap drops.

Lock order, so concurrent writers never deadlock: the caller first takes the user's
cache-version row (``UnitOfWork.change``), then ``record_views`` locks the reels in id order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)

# The list order of API.md, tie-break included (see the module docstring).
LIST_ORDER = 'viewed_at DESC, CAST(reel_id AS text) COLLATE "C" DESC'


def ms_to_datetime(ms: int) -> datetime:
    """Exact (no float on the way): ``ms`` milliseconds since the epoch, in UTC."""
    return EPOCH + timedelta(milliseconds=ms)


def datetime_to_ms(value: datetime) -> int:
    """Whole milliseconds since the epoch (floor); naive datetimes are taken as UTC."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return (value - EPOCH) // _MS


@dataclass(frozen=True)
class ReelInfo:
    id: int
    duration: int
    is_available: bool


@dataclass(frozen=True)
class ViewWrite:
    """One view to record if its reel exists and is available; ``view_duration`` as the
    client sent it (capped at the reel's in SQL), ``None`` when it sent none (the last
    known duration is kept)."""

    reel_id: int
    viewed_at_ms: int
    view_duration: int | None


@dataclass(frozen=True)
class ListEntry:
    """One entry of a user's recently viewed list, with what only this viewer sees of the
    reel (the last known ``view_duration``, ``is_liked``; not part of equality: an entry is
    its place in the list)."""

    reel_id: int
    viewed_at_ms: int
    view_duration: int | None = field(default=None, compare=False)
    is_liked: bool = field(default=False, compare=False)


@dataclass(frozen=True)
class RecordedViews:
    """What a ``record_views`` call found and changed in the user's list.

    ``reels``: the named reels that exist (views of the available ones were recorded).
    ``upserted``: entries whose ``viewed_at`` is now the given one and that are still in
    the list after trimming (with the viewer's duration and like). ``trimmed``: reel ids
    dropped from the list by the cap. ``views_counts``: the counted reels' new
    ``views_count`` (absolute, read under their row locks); ``versions``: their cache
    versions, bumped by the same statement.
    """

    reels: dict[int, ReelInfo]
    upserted: list[ListEntry]
    trimmed: list[int]
    views_counts: dict[int, int] = field(default_factory=dict)
    versions: dict[int, int] = field(default_factory=dict)


@dataclass(frozen=True)
class ReelEntity:
    """What every viewer sees of a reel (the entity cache's source)."""

    video_url: str
    description: str | None
    likes_count: int
    views_count: int


@dataclass(frozen=True)
class LikeChange:
    """A like or unlike: whether it changed anything, the reel's new ``likes_count`` and
    cache version if so, whether the reel is in the user's recently viewed list, and
    whether the reel exists and is available."""

    changed: bool
    likes_count: int | None
    in_list: bool
    found: bool = True  # the reel exists
    available: bool = True
    version: int | None = None  # the reel's new cache version, when changed


def get_reel(session: Session, reel_id: int) -> ReelInfo | None:
    row = session.execute(
        text("SELECT id, duration, is_available FROM reels WHERE id = :id"), {"id": reel_id}
    ).first()
    return ReelInfo(*row) if row else None


# One statement: lock the named reels, count the views of the available ones, upsert the
# user's rows; it answers the reels found ('reel' rows) and the rows written ('view' rows).
#
# ``locked`` takes the reels' row locks (FOR NO KEY UPDATE: it does not block the
# foreign-key checks of other inserts) in id order (LockRows above the Sort), before the
# UPDATE of ``counted`` touches any of them: two batches naming the same reels in
# different orders cannot deadlock. MATERIALIZED: computed once, shared by the three
# readers. The upsert writes, per reel, the newest view of the batch; its duration is the
# newest known one in viewed_at order: the view's own if it has one, else the batch's
# newest view of that reel with one (``known_*``) unless the stored row is newer, else the
# stored one (null on a first view); a duration is capped at the reel's. The stored row
# is read in the same statement; the user's version row (locked by the caller) serialises
# that user's writers. A view older than the stored one never overtakes it.
_RECORD = text(
    "WITH locked AS MATERIALIZED ("
    "  SELECT id, duration, is_available FROM reels"
    "  WHERE id = ANY(CAST(:ids AS bigint[])) ORDER BY id FOR NO KEY UPDATE), "
    "counted AS ("
    "  UPDATE reels SET views_count = reels.views_count + v.n"
    "  FROM unnest(CAST(:count_ids AS bigint[]), CAST(:counts AS bigint[])) AS v(id, n),"
    "       locked"
    "  WHERE reels.id = v.id AND locked.id = v.id AND locked.is_available"
    "  RETURNING reels.id, reels.views_count), "
    "bumped AS ("
    "  INSERT INTO cache_versions (name, version)"
    "  SELECT n.name, 1 FROM counted"
    "  JOIN unnest(CAST(:count_ids AS bigint[]), CAST(:version_names AS text[])) AS n(id, name)"
    "    ON n.id = counted.id AND n.name IS NOT NULL"
    "  ORDER BY n.name"
    "  ON CONFLICT (name) DO UPDATE SET version = cache_versions.version + 1"
    "  RETURNING name, version), "
    "upserted AS ("
    "  INSERT INTO reel_views AS rv (user_id, reel_id, viewed_at, view_duration)"
    "  SELECT :user_id, v.reel_id, v.viewed_at,"
    "    CASE WHEN v.view_duration IS NOT NULL THEN LEAST(v.view_duration, l.duration)"
    "         WHEN v.known_at IS NOT NULL"
    "              AND (cur.viewed_at IS NULL OR v.known_at >= cur.viewed_at)"
    "         THEN LEAST(v.known_duration, l.duration)"
    "         ELSE cur.view_duration END"
    "  FROM unnest("
    "    CAST(:reel_ids AS bigint[]), CAST(:viewed_ats AS timestamptz[]),"
    "    CAST(:durations AS integer[]), CAST(:known_ats AS timestamptz[]),"
    "    CAST(:known_durations AS integer[]))"
    "    AS v(reel_id, viewed_at, view_duration, known_at, known_duration)"
    "  JOIN locked l ON l.id = v.reel_id AND l.is_available"
    "  LEFT JOIN reel_views cur ON cur.user_id = :user_id AND cur.reel_id = v.reel_id"
    "  ON CONFLICT (user_id, reel_id) DO UPDATE"
    "  SET viewed_at = excluded.viewed_at, view_duration = excluded.view_duration"
    "  WHERE excluded.viewed_at >= rv.viewed_at"
    "  RETURNING reel_id, viewed_at, view_duration) "
    "SELECT 'reel' AS kind, id, duration, is_available, NULL::timestamptz AS viewed_at,"
    "  NULL::integer AS view_duration, NULL::boolean AS is_liked, NULL::bigint AS n,"
    "  NULL::text AS name "
    "FROM locked "
    "UNION ALL "
    "SELECT 'view', u.reel_id, NULL, NULL, u.viewed_at, u.view_duration,"
    "  EXISTS (SELECT 1 FROM reel_likes l WHERE l.user_id = :user_id"
    "          AND l.reel_id = u.reel_id), NULL, NULL FROM upserted u "
    "UNION ALL "
    "SELECT 'count', id, NULL, NULL, NULL, NULL, NULL, views_count, NULL FROM counted "
    "UNION ALL "
    "SELECT 'version', NULL, NULL, NULL, NULL, NULL, NULL, version, name FROM bumped"
)

_TRIM = text(
    "DELETE FROM reel_views WHERE user_id = :user_id AND reel_id IN ("
    f"  SELECT reel_id FROM reel_views WHERE user_id = :user_id ORDER BY {LIST_ORDER} "
    "  OFFSET :keep) "
    "RETURNING reel_id"
)


def record_views(
    session: Session, user_id: int, views: Sequence[ViewWrite], keep: int,
    version_names: Mapping[int, str] | None = None,
) -> RecordedViews:
    """Record ``user_id``'s ``views`` of the reels that exist and are available, in two
    statements (the caller holds the user's version row lock):

    - one row per (user, reel): a view at least as new as the stored one replaces its
      ``viewed_at`` and ``view_duration``; an older one never overtakes it; a view without
      a duration keeps the newest known one (stored, or earlier in this batch), null if none;
      a duration longer than the reel is capped at the reel's;
    - every view of an available reel counts once in its ``views_count``, overtaking or not;
    - the user's rows beyond the newest ``keep`` are deleted in this same transaction;
    - the ``cache_versions`` row ``version_names[reel]`` of every counted reel is bumped
      (after its reel row lock: the lock order of every writer of a reel).

    The views of missing or unavailable reels change nothing; ``reels`` says which reels
    exist, for the caller's rejections.

    Why trim here rather than in a job: Postgres then holds, at every commit, exactly the
    list Redis caches (at most ``keep`` rows per user, measured: 50 after 1,000 views).
    A fill or a Redis-down read is one indexed range of at most ``keep`` rows, the Redis
    trim is derived from the rows this DELETE returns, and no job, schedule or lag bound
    is needed. The cost is one DELETE over at most ``keep + len(views)`` index entries
    while this user's version row is locked anyway, i.e. no extra contention.
    """
    if not views:
        return RecordedViews({}, [], [])
    newest: dict[int, ViewWrite] = {}
    known: dict[int, ViewWrite] = {}  # per reel, the newest view that has a duration
    counts: dict[int, int] = {}
    for view in views:
        counts[view.reel_id] = counts.get(view.reel_id, 0) + 1
        kept = newest.get(view.reel_id)
        # One statement may touch a row once: keep the newest view per reel (last on ties).
        if kept is None or view.viewed_at_ms >= kept.viewed_at_ms:
            newest[view.reel_id] = view
        if view.view_duration is not None:
            had = known.get(view.reel_id)
            if had is None or view.viewed_at_ms >= had.viewed_at_ms:
                known[view.reel_id] = view
    rows = list(newest.values())
    carried = [known.get(v.reel_id) for v in rows]
    result = session.execute(
        _RECORD,
        {
            "user_id": user_id,
            "ids": sorted(counts),
            "count_ids": list(counts),
            "counts": list(counts.values()),
            "version_names": [(version_names or {}).get(i) for i in counts],
            "reel_ids": [v.reel_id for v in rows],
            "viewed_ats": [ms_to_datetime(v.viewed_at_ms) for v in rows],
            "durations": [v.view_duration for v in rows],
            "known_ats": [None if k is None else ms_to_datetime(k.viewed_at_ms)
                          for k in carried],
            "known_durations": [None if k is None else k.view_duration for k in carried],
        },
    ).all()
    reels = {r.id: ReelInfo(r.id, r.duration, r.is_available)
             for r in result if r.kind == "reel"}
    changed = [r for r in result if r.kind == "view"]
    counts = {r.id: int(r.n) for r in result if r.kind == "count"}
    by_name = {name: i for i, name in (version_names or {}).items()}
    versions = {by_name[r.name]: int(r.n) for r in result if r.kind == "version"}
    if not any(reel.is_available for reel in reels.values()):
        return RecordedViews(reels, [], [], counts, versions)
    trimmed = [r.reel_id for r in session.execute(_TRIM, {"user_id": user_id, "keep": keep})]
    gone = set(trimmed)
    upserted = [
        ListEntry(r.id, datetime_to_ms(r.viewed_at), r.view_duration, bool(r.is_liked))
        for r in changed if r.id not in gone
    ]
    return RecordedViews(reels, upserted, trimmed, counts, versions)


def recent_views(session: Session, user_id: int, limit: int) -> list[ListEntry]:
    """The user's list, newest first (at most ``limit``: the cap, normally all rows), with
    the user's ``view_duration`` and ``is_liked`` of each reel (one statement)."""
    rows = session.execute(
        text(
            "SELECT reel_id, viewed_at, view_duration,"
            "  EXISTS (SELECT 1 FROM reel_likes l WHERE l.user_id = :user_id"
            "          AND l.reel_id = reel_views.reel_id) AS is_liked "
            "FROM reel_views WHERE user_id = :user_id "
            f"ORDER BY {LIST_ORDER} LIMIT :limit"
        ),
        {"user_id": user_id, "limit": limit},
    )
    return [ListEntry(r.reel_id, datetime_to_ms(r.viewed_at), r.view_duration, r.is_liked)
            for r in rows]


def reel_entities(session: Session, reel_ids: Sequence[int]) -> dict[int, ReelEntity]:
    """What every viewer sees of these reels (one statement; missing reels are absent)."""
    if not reel_ids:
        return {}
    rows = session.execute(
        text("SELECT id, video_url, description, likes_count, views_count FROM reels "
             "WHERE id = ANY(CAST(:ids AS bigint[]))"),
        {"ids": list(reel_ids)},
    )
    return {r.id: ReelEntity(r.video_url, r.description, r.likes_count, r.views_count)
            for r in rows}


# One statement per like or unlike (the caller holds the user's version row lock): lock the
# reel's row (FOR NO KEY UPDATE, as a view does), insert or delete the like, move
# ``likes_count`` with it, bump the reel's ``cache_versions`` row (after its reel row: the
# lock order of every writer of a reel) and say whether the reel is in the user's list.
# A missing reel, an unavailable one (for a like) or a like already there (or an unlike of
# none) changes nothing: ``counted`` and ``bumped`` are then empty.
_LIKE_HEAD = (
    "WITH locked AS MATERIALIZED ("
    "  SELECT id, is_available FROM reels WHERE id = :reel_id FOR NO KEY UPDATE), "
)
_LIKE_TAIL = (
    "counted AS ("
    "  UPDATE reels SET likes_count = reels.likes_count + :delta FROM toggled"
    "  WHERE reels.id = toggled.reel_id RETURNING reels.likes_count), "
    "bumped AS ("
    "  INSERT INTO cache_versions (name, version) SELECT :version_name, 1 FROM counted"
    "  ON CONFLICT (name) DO UPDATE SET version = cache_versions.version + 1"
    "  RETURNING version) "
    "SELECT (SELECT is_available FROM locked) AS is_available,"
    "  (SELECT likes_count FROM counted) AS likes_count,"
    "  (SELECT version FROM bumped) AS version,"
    "  EXISTS (SELECT 1 FROM reel_views WHERE user_id = :user_id AND reel_id = :reel_id)"
    "    AS in_list"
)
_LIKE = text(
    _LIKE_HEAD
    + "toggled AS ("
    "  INSERT INTO reel_likes (reel_id, user_id) SELECT id, :user_id FROM locked"
    "  WHERE is_available ON CONFLICT DO NOTHING RETURNING reel_id), "
    + _LIKE_TAIL
)
_UNLIKE = text(
    _LIKE_HEAD
    + "toggled AS ("
    "  DELETE FROM reel_likes WHERE reel_id = (SELECT id FROM locked) AND user_id = :user_id"
    "  RETURNING reel_id), "
    + _LIKE_TAIL
)


def like(session: Session, user_id: int, reel_id: int, version_name: str) -> LikeChange:
    """Like an available reel, in one statement (``_LIKE``): ``changed`` False if it was
    already liked, or the reel is missing (``found`` False) or unavailable. ``likes_count``
    moves with the row in this transaction (the PK makes a concurrent double like a no-op),
    so it is exact; the ``cache_versions`` row ``version_name`` is bumped when it moves."""
    return _toggle(session, _LIKE, user_id, reel_id, version_name, 1)


def unlike(session: Session, user_id: int, reel_id: int, version_name: str) -> LikeChange:
    """Remove a like (``changed`` False if there was none), as ``like`` does."""
    return _toggle(session, _UNLIKE, user_id, reel_id, version_name, -1)


def _toggle(session: Session, statement: Any, user_id: int, reel_id: int,
            version_name: str, delta: int) -> LikeChange:
    row = session.execute(statement, {"user_id": user_id, "reel_id": reel_id, "delta": delta,
                                      "version_name": version_name}).one()
    changed = row.likes_count is not None
    return LikeChange(
        changed,
        int(row.likes_count) if changed else None,
        changed and bool(row.in_list),
        found=row.is_available is not None,
        available=bool(row.is_available),
        version=int(row.version) if changed else None,
    )


