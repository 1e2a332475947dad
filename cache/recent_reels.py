"""A user's recently viewed reels in Redis: key layout, read, fill, apply, in one place.

Layout: one sorted set per user, ``<prefix>{u:<id>}:reels:recent``; member = reel id
(decimal text), score = ``viewed_at`` in whole milliseconds since the epoch (about
1.7e12: exact, far below 2^53). It holds at most ``MAX_RECENT_REEL_VIEWS`` reels (setting
``max_recent_reel_views``, <= 127) plus one sentinel, so at most 128 entries: the
compact listpack (ziplist before Redis 7) encoding. Its version scope is
``Scope(u:<id>, "reels")``; Postgres (``storage.recent_reels``) holds the same list.

The sentinel member ``_`` at score ``-inf`` marks a filled list, so a user who viewed
nothing is a cache hit (a set with only the sentinel), not a miss on every read. It lives
*inside* the set on purpose: a companion "filled" key would not work, because a versioned
apply runs ops only on keys that exist (``cache.versioned``): the first view of a user
with an empty, filled list would find no set, skip its ZADD, and the marker would then
vouch for a list missing that view. With the sentinel the set exists whenever it is
filled. It sits at rank 0 (lowest score), so the trim ``ZREMRANGEBYRANK key 1 -(N+1)``
keeps it and the newest N.

Writes (``record``) carry ZADD with absolute scores, ZREM of the ids Postgres trimmed,
and the rank trim as a bound, plus EXPIRE: all idempotent, as the versioned apply needs.
A miss is rebuilt once from Postgres (single flight, ``cache.fill``); Redis down means
the answer comes from Postgres, identical by construction (same order, see
``storage.recent_reels``).

Measured on Redis 7.0, one user's full list (50 reels + sentinel): ``OBJECT ENCODING``
listpack; ``MEMORY USAGE`` 968 bytes with ten-digit reel ids (712 with ids below 100,
1,096 with thirteen digits). ``tests/integration/recent_reels/test_reels_cache.py``
measures it after 1,000 views.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from cache import checks
from cache.client import NO_VALUE
from cache.fill import read_through
from cache.keys import Keyspace, Scope, user_tag
from cache.versioned import Change
from storage import recent_reels as reels_store
from storage.recent_reels import ListEntry

PATH = "recent_reels"
SENTINEL = "_"
SENTINEL_SCORE = "-inf"
# A sorted set keeps its compact encoding up to 128 entries: N reels plus the sentinel.
MAX_CAPACITY = 127


def scope(user_id: int) -> Scope:
    return Scope(user_tag(user_id), "reels")


def key(keys: Keyspace, user_id: int) -> str:
    return keys.key(user_tag(user_id), "reels", "recent")


@dataclass(frozen=True)
class RecentPage:
    """One page of a user's list (newest first) and the list's length."""

    total: int
    entries: list[ListEntry]


def page_of(entries: Sequence[ListEntry], start: int, count: int) -> RecentPage:
    """The page of a whole list, as ``read`` would give it from Redis."""
    return RecentPage(len(entries), list(entries[start : start + count]))


def read(redis: Any, keys: Keyspace, user_id: int, start: int, count: int, ttl: int) -> Any:
    """One round trip: the page and the length, or ``NO_VALUE`` if the list is not cached.

    Refreshes the idle TTL of a list in use.
    """
    k = key(keys, user_id)
    pipe = redis.pipeline(transaction=False)
    pipe.zcard(k)
    # Newest first; the sentinel (lowest) can only show at the end of the last page.
    pipe.zrevrange(k, start, start + count - 1, withscores=True)
    pipe.expire(k, ttl)
    size, members, _ = pipe.execute()
    if not size:
        return NO_VALUE
    entries = [
        ListEntry(int(member), int(score)) for member, score in members
        if member != SENTINEL.encode()
    ]
    return RecentPage(size - 1, entries)


def stage(pipe: Any, temp: str, entries: Sequence[ListEntry]) -> None:
    """Write a whole list (from Postgres) into the fill's temporary key."""
    mapping: dict[str, Any] = {SENTINEL: SENTINEL_SCORE}
    mapping.update({str(e.reel_id): e.viewed_at_ms for e in entries})
    pipe.zadd(temp, mapping)


def record(
    change: Change,
    keys: Keyspace,
    user_id: int,
    upserted: Sequence[ListEntry],
    trimmed: Sequence[int],
    capacity: int,
    ttl: int,
) -> None:
    """Add to ``change`` the ops that turn the cached list into the committed one."""
    k = key(keys, user_id)
    if upserted:
        args: list[str] = []
        for e in upserted:
            args += [str(e.viewed_at_ms), str(e.reel_id)]
        change.op("ZADD", k, *args)
    if trimmed:
        change.op("ZREM", k, *(str(r) for r in trimmed))
    # A bound, not the mechanism: ZREM above already removed exactly what Postgres did.
    change.op("ZREMRANGEBYRANK", k, "1", str(-(capacity + 1)))
    change.op("EXPIRE", k, str(ttl))


def recent_page(
    app_state: Any,
    user_id: int,
    start: int,
    count: int,
    load: Callable[[], list[ListEntry]],
) -> RecentPage:
    """The page from Redis; on a miss one fill from ``load()`` (the whole list from
    Postgres); with Redis down or busy, the page computed from ``load()`` alone."""
    cache = app_state.cache
    keys = cache.keys
    k = key(keys, user_id)

    def fill() -> RecentPage:
        entries = app_state.filler.fill(
            PATH, scope(user_id), [k], load, lambda pipe, temps, data: stage(pipe, temps[k], data)
        )
        return page_of(entries, start, count)

    return read_through(
        cache,
        PATH,
        lambda r: read(r, keys, user_id, start, count, cache.idle_ttl),
        fill,
        lambda: page_of(load(), start, count),
    )


# --- the operator's check / rebuild / warm (see cache/checks.py) ----------------------------


def _load(deps: checks.Deps, user_id: int) -> Callable[[], list[ListEntry]]:
    capacity = deps.settings.max_recent_reel_views
    return lambda: checks.sql(deps, reels_store.recent_views, user_id, capacity)


def check(deps: checks.Deps, user_id: int) -> list[checks.Difference]:
    """The recently viewed list (ids, view times and its completeness mark)."""
    keys = deps.cache.keys
    user_scope, k = scope(user_id), key(keys, user_id)
    cached = checks.peek(deps.cache, [("get", keys.version(user_scope)), ("zrange", k)])
    before = checks.versions(deps, [user_scope])
    truth = _load(deps, user_id)()
    after = checks.versions(deps, [user_scope])
    exists, raw = cached[1]
    if not exists or not checks.settled(checks.version_copy(cached[0]), before, after,
                                        user_scope):
        return []
    got = sorted((int(m), int(s)) for m, s in raw if m != SENTINEL.encode())
    marked = any(m == SENTINEL.encode() for m, _ in raw)
    want = sorted((e.reel_id, e.viewed_at_ms) for e in truth)
    return checks.differs(PATH, k, (got, marked), (want, True), user_id=user_id)


def rebuild(deps: checks.Deps, user_id: int) -> None:
    k = key(deps.cache.keys, user_id)
    deps.filler.fill(PATH, scope(user_id), [k], _load(deps, user_id),
                     lambda pipe, temps, data: stage(pipe, temps[k], data))


def warm(deps: checks.Deps, user_id: int) -> None:
    recent_page(deps, user_id, 0, 20, _load(deps, user_id))
