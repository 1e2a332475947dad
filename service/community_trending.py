"""Trending walks of the community feed: one durable ranking snapshot per walk.

A walk (a first ``trending`` page and every page after its cursors) reads one immutable
ranking, snapshot ``sid`` (the cursor carries it). Its truth is a Postgres row
(``trending_snapshots``: post ids and scores in rank order, at most
``TRENDING_MAX_POSTS``); Redis holds a copy (``{cf}:ts:<sid>``, see
cache/community_feed.py) that pages read. So a walk never repeats or skips a post
whatever happens between its pages: likes, comments and views do not move posts within
the snapshot, new posts are not in it, deleted ones are filtered on the way out, and a
copy flushed, evicted or unreachable is replaced by the row itself.

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
  at most 10,000 ids and scores each: about 10 MB in Postgres, and as much in Redis.
"""

from __future__ import annotations

import contextlib
import math
import time
from datetime import UTC, datetime

from cache import community_feed as cf
from cache.client import CacheUnavailable
from cache.fill import LeaseHeld
from service.bootstrap import AppState
from service.state import state
from storage import community_feed as cf_sql

PATH = "community_feed"
Key = tuple[int, int]  # (score, post id)


class UnknownSnapshot(Exception):
    """The cursor names a snapshot that does not exist (expired and deleted, or forged)."""


def start_walk() -> tuple[int, str]:
    """The snapshot a new trending walk reads, and the cache outcome (hit/miss/fallback)."""
    app = state()
    redis_ok = True
    try:
        sid = cf.snapshot_pointer(app.cache, PATH)
        if sid is not None:
            return sid, "hit"
    except CacheUnavailable:
        redis_ok = False
    row, entries = _reuse_or_create(app, redis_ok)
    if not redis_ok:
        return row.id, "fallback"
    s = app.settings
    pointer_ttl = math.floor(s.trending_snapshot_reuse - row.age_s)
    try:
        if entries is not None:
            cf.store_snapshot(app.cache, PATH, row.id, entries, s.trending_snapshot_ttl,
                              pointer_ttl)
        else:
            cf.share_snapshot(app.cache, PATH, row.id, pointer_ttl)
    except CacheUnavailable:
        return row.id, "fallback"
    return row.id, "miss"


def keys_after(sid: int, after: Key | None, n: int) -> tuple[list[Key], str]:
    """Up to ``n`` keys of snapshot ``sid`` strictly after ``after``, and the cache outcome.
    Raises ``UnknownSnapshot``."""
    app = state()
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
    with app.db.session() as session:
        keys = cf_sql.snapshot_after(session, sid, after, n)
    if keys is None:
        raise UnknownSnapshot(sid)
    return keys, outcome


def _load(app: AppState, sid: int) -> tuple[list[Key], int] | None:
    """A snapshot's entries and the seconds its copy should live, from its row."""
    with app.db.session() as session:
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
    deadline = time.monotonic() + app.cache.lease_wait_ms / 1000
    while True:
        with app.db.session() as session:
            locked = cf_sql.try_lock_snapshots(session)
            row = cf_sql.latest_snapshot(session, reuse)
            if row is not None:
                return row, None
            if locked or time.monotonic() >= deadline:
                ref, entries = _current_ranking(app, redis_ok)
                row = cf_sql.create_snapshot(session, ref, entries)
                session.commit()
                return row, entries
        time.sleep(0.01)


def _current_ranking(app: AppState, redis_ok: bool) -> tuple[datetime, list[Key]]:
    """The live trending ranking: the Redis set (rebuilt if missing), else Postgres now."""
    from jobs.community_feed import fill_trending, ranking_at

    cap = app.settings.trending_max_posts
    if redis_ok:
        try:
            got = cf.read_trending(app.cache, PATH, cap)
            if got is None:
                with contextlib.suppress(LeaseHeld):  # another rebuild runs: compute here
                    fill_trending(app)
                got = cf.read_trending(app.cache, PATH, cap)
            if got is not None:
                ref, entries = got
                return datetime.fromtimestamp(float(ref), UTC), entries
        except CacheUnavailable:
            pass
    ref_s = round(time.time(), 6)
    return datetime.fromtimestamp(ref_s, UTC), ranking_at(app, ref_s)[:cap]
