"""Trending walks of the community feed: one durable ranking snapshot per walk.

A walk (a first ``trending`` page and every page after its cursors) reads one immutable
ranking, snapshot ``sid`` (the cursor carries it). Its truth is a Postgres row
(``trending_snapshots``: post ids and scores in rank order, the trending set's: the
window plus the head of the older posts); Redis holds a copy (``{cf}:ts:<sid>``, see
cache/community_feed.py) that pages read. So a walk never repeats or skips a post
whatever happens between its pages: likes, comments and views do not move posts within
the snapshot, new posts are not in it, deleted ones are filtered on the way out, and a
copy flushed, evicted or unreachable is replaced by the row itself.

Every post, however old: the order is one key ``(score, id)`` descending, the score at
the snapshot's reference time. The snapshot holds every post above its *floor* (the key
of the last older post the trending set kept; no floor: it holds every post). A walk
reads the copy in Redis down to the floor, then goes on in Postgres in the snapshot's
*deep tail* (``trending_snapshot_tails``): the snapshot's own entries below the floor
plus every live post created before the snapshot was taken that it does not hold,
scored at its reference time with the counters of the moment the tail is written and
capped just below the floor. The tail is written once, by the first page that needs it
(one pass over the live posts, under the snapshot row's lock: concurrent first deep
pages wait for it), and never changes after, so pages past the floor are keyset reads
``(score, id) < cursor`` of a frozen table: stable under likes (a frozen score never
moves a post across the cursor), new posts (created after the snapshot: not in it) and
deletes (filtered on the way out), whether Redis is up or not. The cursor is one key for
both parts: above the floor it is a Redis read, at or below it a Postgres one; it also
carries the floor (``fl``), so a warm page needs nothing more than before.

Order and staleness: above the floor the order is exactly the snapshot's (scores as the
trending set had them, at most one job interval behind, see cache/community_feed.py).
An older post that gained engagement since the last rebuild and would now rank above
the floor is listed just below it (its score capped): reached once, never twice, at
most one interval out of place. ``total_count`` counts what the whole walk returns:
the snapshot's live posts and, with a floor, every live post created before it was
taken, that the caller may see. One race is left: a post whose creating transaction
began before the snapshot was taken (``created_at`` is its start) but committed after
the tail was written is counted yet not walked (it shows in the next walk).

Cost: the trending job's pass over the older posts (for the head) runs once per
rebuild in the worker; the tail's pass runs once per snapshot that a walk takes past
its floor, on that page's request; every other deep page is one index range.

- Start: the Redis pointer ``{cf}:ts:latest`` names the snapshot walks share while it is
  younger than ``TRENDING_SNAPSHOT_REUSE`` s. Without it (expired, flushed, Redis down):
  under a Postgres advisory try-lock, reuse the newest row younger than that, or insert
  a new one from the trending set (read atomically from Redis, rebuilt first if missing)
  or, with Redis down, from the ranking computed in Postgres now; then copy it into
  Redis and set the pointer. Requests that lose the lock poll for the winner's row for
  up to ``lease_wait_ms`` (no connection held meanwhile), so concurrent starts make one
  snapshot, not one each.
- Page: the copy in Redis; a missing copy is restored from the row (single-flight; a
  request that loses the lease reads its page from the row); with Redis down, a keyset
  query on the row.
- Lifetime: a snapshot (row and copy) lives ``TRENDING_SNAPSHOT_TTL`` s from when it was
  taken, plus up to one trending job interval for the row (the job deletes it). So a walk
  has at least TTL - REUSE s (29.5 minutes by default) to finish; after that its cursor
  is answered with a ``400 invalid_cursor`` (start a new walk), never a wrong page.
- Bounds: at most one snapshot per REUSE window, so TTL/REUSE + 1 rows (61 by default) of
  at most 11,000 ids and scores each (window + head): about 11 MB in Postgres, and as
  much in Redis. A deep tail holds about one row per live post; only snapshots walked
  past their floor have one, and the job deletes it with its snapshot.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from cache import community_feed as cf
from cache.client import NO_VALUE, CacheUnavailable
from cache.lease import LeaseHeld, wait_for
from service.bootstrap import AppState
from storage import community_feed as cf_sql
from storage.posts import Engagement

PATH = "community_feed"
Key = tuple[int, int]  # (score, post id)


class UnknownSnapshot(Exception):
    """The cursor names a snapshot that does not exist (expired and deleted, or forged)."""


def start_walk(app: AppState) -> tuple[int, cf.Floor, str]:
    """The snapshot a new trending walk reads, its floor, and the cache outcome
    (hit/miss/fallback)."""
    redis_ok = True
    try:
        shared = cf.snapshot_pointer(app.cache, PATH)
        if shared is not None:
            return *shared, "hit"
    except CacheUnavailable:
        redis_ok = False
    row, entries = _reuse_or_create(app, redis_ok)
    if not redis_ok:
        return row.id, row.floor, "fallback"
    s = app.settings
    pointer_ttl = math.floor(s.trending_snapshot_reuse - row.age_s)
    try:
        if entries is not None:
            cf.store_snapshot(app.cache, PATH, row.id, entries, s.trending_snapshot_ttl,
                              pointer_ttl, row.floor)
        else:
            cf.share_snapshot(app.cache, PATH, row.id, pointer_ttl, row.floor)
    except CacheUnavailable:
        return row.id, row.floor, "fallback"
    return row.id, row.floor, "miss"


def walk_after(app: AppState, sid: int, floor: cf.Floor, after: Key | None, n: int,
               prefetched: cf.KeyRange | None = None) -> tuple[list[Key], str]:
    """Up to ``n`` keys of the walk of snapshot ``sid`` strictly after ``after``: the
    snapshot down to its ``floor``, then its deep tail; and the cache outcome.
    ``prefetched``: the copy's range after ``after`` (``n`` entries), read already.
    Raises ``UnknownSnapshot``."""
    if floor is None:
        return keys_after(app, sid, after, n, prefetched)
    keys: list[Key] = []
    outcome = "hit"
    if after is None or after > floor:
        head, outcome = keys_after(app, sid, after, n, prefetched)
        keys = [k for k in head if k >= floor]
        if len(keys) == len(head) and len(head) == n:
            return keys, outcome
        after = floor
    with app.db.session() as session:
        if not cf_sql.ensure_tail(session, sid):
            raise UnknownSnapshot(sid)
        keys += cf_sql.tail_after(session, sid, after, n - len(keys))
    return keys, outcome


def keys_after(app: AppState, sid: int, after: Key | None, n: int,
               prefetched: cf.KeyRange | None = None) -> tuple[list[Key], str]:
    """Up to ``n`` keys of snapshot ``sid``'s own entries strictly after ``after``, and
    the cache outcome (``prefetched``: that range, read already). Raises
    ``UnknownSnapshot``."""
    if prefetched is not None and prefetched.entries is not None:
        return prefetched.entries, "hit"
    ck = cf.CommunityKeys(app.cache.keys)
    outcome = "miss"
    try:
        rng = cf.range_after(app.cache, PATH, [ck.snapshot(sid)], after, n)[0]
        if rng.entries is not None:
            return rng.entries, "hit"
        if not cf.restore_snapshot(app.cache, PATH, sid, lambda: _load(app, sid)):
            raise UnknownSnapshot(sid)
        rng = cf.range_after(app.cache, PATH, [ck.snapshot(sid)], after, n)[0]
        if rng.entries is not None:
            return rng.entries, outcome
    except LeaseHeld:
        pass  # another request is restoring the copy: this page comes from the row
    except CacheUnavailable:
        outcome = "fallback"
    with app.db.read() as session:
        keys = cf_sql.snapshot_after(session, sid, after, n)
    if keys is None:
        raise UnknownSnapshot(sid)
    return keys, outcome


def _load(app: AppState, sid: int) -> tuple[list[Key], int] | None:
    """A snapshot's entries and the seconds its copy should live, from its row."""
    with app.db.read() as session:
        found = cf_sql.snapshot_entries(session, sid)
    if found is None:
        return None
    row, entries = found
    # Past its TTL but not yet deleted by the job: keep the copy for one job interval.
    ttl = max(math.ceil(app.settings.trending_snapshot_ttl - row.age_s),
              app.settings.trending_recompute_interval)
    return entries, ttl


def _reuse_or_create(app: AppState,
                     redis_ok: bool) -> tuple[cf_sql.SnapshotRow, list[Key] | None]:
    """The snapshot new walks share: a young one, else a new one (entries returned)."""
    reuse = app.settings.trending_snapshot_reuse

    def attempt(last: bool = False) -> Any:
        # Under the advisory lock (or, having waited long enough, without it) create one.
        with app.db.session() as session:
            locked = cf_sql.try_lock_snapshots(session)
            row = cf_sql.latest_snapshot(session, reuse)
            if row is not None:
                return row, None
            if not (locked or last):
                return NO_VALUE
            ref, floor, entries = _current_ranking(app, redis_ok)
            row = cf_sql.create_snapshot(session, ref, entries, floor)
            session.commit()
            return row, entries

    got = attempt()
    if got is NO_VALUE:
        got = wait_for(attempt, app.cache.lease_wait_ms)
    return attempt(last=True) if got is NO_VALUE else got


def _current_ranking(app: AppState, redis_ok: bool
                     ) -> tuple[datetime, cf.Floor, list[Key]]:
    """The live trending set and its floor: the Redis set (rebuilt if missing), else
    Postgres now."""
    cap = app.settings.trending_max_posts + TAIL_HEAD
    if redis_ok:
        try:
            got = cf.read_trending(app.cache, PATH, cap)
            if got is None:
                with contextlib.suppress(LeaseHeld):  # another rebuild runs: compute here
                    fill_trending(app)
                got = cf.read_trending(app.cache, PATH, cap)
            if got is not None:
                ref, floor, entries = got
                return datetime.fromtimestamp(float(ref), UTC), floor, entries
        except CacheUnavailable:
            pass
    ref_s = round(time.time(), 6)
    entries, floor = ranking_at(app, ref_s)
    return datetime.fromtimestamp(ref_s, UTC), floor, entries


# --- the trending set's upkeep (the scheduler runs trending_upkeep) ----------------------

# Older posts (outside the window) kept in the trending set: a walk reaches the best of
# them from Redis, and goes to Postgres (the snapshot's deep tail) only past them.
TAIL_HEAD = 1000


def rank(window: Sequence[Engagement], ref: float) -> list[tuple[int, int]]:
    """``(score, id)`` of each post at reference time ``ref``, best first (ties: id desc)."""
    keys = [
        (cf.trending_score(e.like_count, e.comment_count, e.view_count, e.is_featured,
                           e.created_at.timestamp(), ref), e.id)
        for e in window
    ]
    keys.sort(reverse=True)
    return keys


def ranking_at(app: AppState, ref: float) -> tuple[list[tuple[int, int]], cf.Floor]:
    """The trending set from Postgres at reference time ``ref`` (epoch seconds): live
    posts created in the window ending at ``ref`` (at most ``TRENDING_MAX_POSTS``) and the
    best ``TAIL_HEAD`` older ones, ranked; and its floor (None if no older post is left
    out)."""
    settings = app.settings
    now = datetime.fromtimestamp(ref, UTC)
    since = now - timedelta(hours=settings.trending_window_hours)
    with app.db.read() as session:
        window = cf_sql.trending_window(session, since, now, settings.trending_max_posts)
        # Older than the window's oldest post (the window may have been cut at its cap).
        before = ((window[-1].created_at, window[-1].id)
                  if len(window) >= settings.trending_max_posts else (since, 0))
        keep = max(TAIL_HEAD, 1)
        head = cf_sql.trending_older(session, before, now, keep + 1)
    floor = None
    if len(head) > keep:
        head = head[:keep]
        floor = min(rank(head, ref))
    return rank(window + head, ref), floor


def prune_snapshots(app: AppState) -> int:
    """Delete trending walk snapshots older than their TTL; returns how many."""
    with app.db.session() as session:
        deleted = cf_sql.delete_snapshots_older_than(session,
                                                     app.settings.trending_snapshot_ttl)
        session.commit()
    return deleted


def trending_upkeep(app: AppState) -> int:
    """One scheduled run: prune expired snapshots, then rebuild the trending set."""
    prune_snapshots(app)
    return fill_trending(app)


def fill_trending(app: AppState) -> int:
    """Recompute the trending set at a new reference time and publish it (single-flight;
    raises ``LeaseHeld`` if another rebuild runs, ``CacheUnavailable`` if Redis fails).
    Returns the number of posts ranked."""
    ck = cf.CommunityKeys(app.cache.keys)

    def load() -> tuple[str, list[tuple[int, int]], cf.Floor]:
        ref = repr(round(time.time(), 6))
        return ref, *ranking_at(app, float(ref))

    def stage(pipe: Any, temps: dict[str, str], data: tuple[str, list, cf.Floor]) -> None:
        ref, entries, floor = data
        cf.stage_trending(pipe, temps, ck, entries, ref, floor)

    _, entries, _ = app.filler.fill(PATH, cf.trending_scope(),
                                    [ck.trending, ck.trending_ref, ck.trending_floor],
                                    load, stage)
    return len(entries)
