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

from jobs.periodic import Periodic
from service.bootstrap import AppState
from service.community_feed_trending import trending_upkeep


def trending_job(app: AppState) -> Periodic:
    """The scheduler's periodic trending rebuild and snapshot pruning."""
    return Periodic("community-trending", app.settings.trending_recompute_interval,
                    trending_upkeep)
