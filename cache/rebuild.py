"""Redis side of the cache operations (rebuild, reconciliation, warming, idle TTLs).

Read-only peeks at cached values, in one pipelined round trip, that the checks of
``jobs/read_paths.py`` parse with each slice's own parsers; a user's keys found by SCAN
(never KEYS; a cluster client scans every master); their TTLs and ``MEMORY USAGE``; and
``refresh_user_ttls``, which keeps an active user's per-user keys alive.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cache import activity_feed, memberships, ranked_feed, read_state, recent_reels
from cache.client import Cache
from cache.community_feed import CommunityKeys, colls_scope, follows_scope
from cache.keys import Keyspace, user_tag

PATH = "rebuild"

# What a peek can read of a key: the command that returns it whole.
READERS = {
    "get": lambda pipe, key: pipe.get(key),
    "smembers": lambda pipe, key: pipe.smembers(key),
    "hgetall": lambda pipe, key: pipe.hgetall(key),
    "zrange": lambda pipe, key: pipe.zrange(key, 0, -1, withscores=True),
    "lrange": lambda pipe, key: pipe.lrange(key, 0, -1),
}


def peek(cache: Cache, reads: Sequence[tuple[str, str]]) -> list[Any]:
    """``[(kind, key), ...]`` -> ``[(exists, value), ...]`` in one round trip (read-only).
    Raises ``CacheUnavailable``."""

    def run(r: Any) -> list[Any]:
        pipe = r.pipeline(transaction=False)
        for kind, key in reads:
            pipe.exists(key)
            READERS[kind](pipe, key)
        return pipe.execute()

    raw = cache.run(PATH, run) if reads else []
    return [(bool(raw[i]), raw[i + 1]) for i in range(0, len(raw), 2)]


def version_copy(exists_value: tuple[bool, Any]) -> int | None:
    """A peeked version copy (``get`` of ``keys.version(scope)``) as an int, or None."""
    exists, value = exists_value
    return int(value) if exists and value is not None else None


def drop(cache: Cache, keys: Sequence[str]) -> None:
    """Delete ``keys`` one by one (any slots). Only for keys a read rebuilds whole."""

    def run(r: Any) -> None:
        pipe = r.pipeline(transaction=False)
        for key in keys:
            pipe.delete(key)
        pipe.execute()

    if keys:
        cache.run(PATH, run)


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
        recent_reels.key(keys, user_id),
        memberships.key(keys, user_id),
        CommunityKeys(keys).followees(user_id),
        CommunityKeys(keys).collectives(user_id),
    ]
    scopes = [activity_feed.scope(user_id), recent_reels.scope(user_id),
              memberships.scope(user_id), follows_scope(user_id), colls_scope(user_id),
              ranked_feed.scope(user_id)]
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
    groups_key = memberships.key(keys, user_id)

    def run(r: Any) -> list[Any]:
        pipe = r.pipeline(transaction=False)
        for method, args, kwargs in first:
            getattr(pipe, method)(*args, **kwargs)
        for key in user_fixed_keys(keys, user_id):
            pipe.expire(key, ttl)
        pipe.smembers(groups_key)
        reply = pipe.execute()
        groups = memberships.parse_groups(reply[-1])
        if groups:
            pipe = r.pipeline(transaction=False)
            for group_id in groups:
                pipe.expire(read_state.key(keys, user_id, group_id), ttl)
                pipe.expire(keys.version(read_state.scope(user_id, group_id)), ttl)
            pipe.execute()
        return reply[: len(first)]

    return cache.run("activity_mark", run)
