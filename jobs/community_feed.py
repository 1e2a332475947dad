"""Trending upkeep: the ranking function and the scheduled rebuild of ``{cf}:trending``.

The rebuild recomputes every score of the window (live posts of the last
``TRENDING_WINDOW_HOURS``, at most ``TRENDING_MAX_POSTS``) and of the head of the older
posts (the best ``TAIL_HEAD`` of those outside the window, found by one pass over them in
Postgres) at one new reference time, and publishes the set, its reference and its floor
(the head's last key, when older posts remain outside) together, every
``TRENDING_RECOMPUTE_INTERVAL`` seconds (default 60). Between rebuilds, writes re-score
their post at the current reference time, so the set is at most one interval stale (see
cache/community_feed.py).

The same job deletes trending walk snapshots (``trending_snapshots`` rows) older than
``TRENDING_SNAPSHOT_TTL``, even while Redis is down (their Redis copies expire by TTL).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from cache import community_feed as cf
from service.bootstrap import AppState
from storage import community_feed as cf_sql
from storage.posts import Engagement

PATH = "community_feed"
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
    with app.db.session() as session:
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


def trending_job(app: AppState) -> Any:
    """The scheduler's periodic trending rebuild (registered in jobs/scheduler.py)."""
    from jobs.scheduler import Periodic

    return Periodic("community-trending", app.settings.trending_recompute_interval,
                    trending_upkeep)
