"""Redis side of the cache operations (rebuild, reconciliation, warming, idle TTLs).

A user's keys found by SCAN (never KEYS; a cluster client scans every master); their TTLs
and ``MEMORY USAGE``; and ``refresh_user_ttls``, which keeps an active user's per-user keys
alive. The checks themselves are each read path's own (``check`` in ``cache/<path>.py``,
built on ``cache/checks.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cache import activity_feed, ranked_feed, recent_reels
from cache import group_feed as gf_cache
from cache import posts as cache_posts
from cache.client import Cache
from cache.community_feed import CommunityKeys, colls_scope, follows_scope
from cache.keys import Keyspace, user_tag

PATH = "rebuild"

# --- one user's keys ------------------------------------------------------------------------


def user_pattern(keys: Keyspace, user_id: int) -> str:
    """A SCAN pattern for every key under the user's hash tag."""
    return f"{keys.prefix}{{{user_tag(user_id)}}}:*"


def scan_user_keys(cache: Cache, user_id: int, count: int = 1000) -> list[str]:
    """Every key of the user, by SCAN (never KEYS); on a cluster, one node holds them."""
    pattern = user_pattern(cache.keys, user_id)
    return sorted(k.decode() if isinstance(k, bytes) else k
                  for k in cache.redis.scan_iter(match=pattern, count=count))


def ttls_and_sizes(cache: Cache, keys: Sequence[str]) -> dict[str, tuple[int, int]]:
    """``{key: (ttl seconds (-1 none, -2 gone), MEMORY USAGE bytes)}``."""

    def run(r: Any) -> list[Any]:
        pipe = r.pipeline(transaction=False)
        for key in keys:
            pipe.ttl(key)
            pipe.memory_usage(key, samples=0)
        return pipe.execute()

    raw = cache.run(PATH, run) if keys else []
    return {key: (int(raw[2 * i]), int(raw[2 * i + 1] or 0)) for i, key in enumerate(keys)}


def user_fixed_keys(keys: Keyspace, user_id: int) -> list[str]:
    """The user's per-user keys whose names do not depend on data, with their version
    copies (the per-group read states are found through the cached groups set)."""
    names = [
        *activity_feed.all_keys(keys, user_id),
        *recent_reels.scope_keys(keys, user_id),
        gf_cache.groups_key(keys, user_id),
        CommunityKeys(keys).followees(user_id),
        CommunityKeys(keys).collectives(user_id),
        cache_posts.likes_key(keys, user_id),
    ]
    scopes = [activity_feed.scope(user_id), recent_reels.scope(user_id),
              gf_cache.groups_scope(user_id), follows_scope(user_id), colls_scope(user_id),
              ranked_feed.scope(user_id), cache_posts.likes_scope(user_id)]
    return names + [keys.version(s) for s in scopes]


def refresh_user_ttls(cache: Cache, user_id: int,
                      first: Sequence[tuple[str, tuple, dict]] = ()) -> list[Any]:
    """Push every per-user key of ``user_id`` to the idle TTL (missing keys stay missing).

    ``first`` are extra ``(method, args, kwargs)`` calls queued before (the activity mark); their
    replies are returned. Two round trips at most: the fixed keys and the groups set, then
    the per-group read states. Short-TTL page caches (the ranking and its inputs) keep
    their own TTLs on purpose.
    """
    keys, ttl = cache.keys, cache.idle_ttl
    groups_key = gf_cache.groups_key(keys, user_id)

    def run(r: Any) -> list[Any]:
        pipe = r.pipeline(transaction=False)
        for method, args, kwargs in first:
            getattr(pipe, method)(*args, **kwargs)
        for key in user_fixed_keys(keys, user_id):
            pipe.expire(key, ttl)
        pipe.smembers(groups_key)
        reply = pipe.execute()
        groups = gf_cache.parse_groups(reply[-1])
        if groups:
            pipe = r.pipeline(transaction=False)
            for group_id in groups:
                pipe.expire(gf_cache.key(keys, user_id, group_id), ttl)
                pipe.expire(keys.version(gf_cache.scope(user_id, group_id)), ttl)
            pipe.execute()
        return reply[: len(first)]

    return cache.run("activity_mark", run)
