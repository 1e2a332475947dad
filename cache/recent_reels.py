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

Beside it, in the same slot and scope, ``{u:<id>}:reels:mine``: a hash of what only this
user sees of each reel in the list (``d:<reel>``: the last known ``view_duration``, empty
for null; ``l:<reel>``: ``1`` if the user likes it) plus the sentinel field ``_``. A read
needs both keys; either missing is a miss and both are filled together. Views, trims and
(un)likes keep it current through the user's change.

The reels themselves (rule 7): one entity per reel (``cache/entities.py``), shared by every
viewer, ``{r:<id>}:reel`` in the reel's own slot under ``Scope(r:<id>, "reel")``:
``video_url`` and ``description`` as rendered JSON, ``likes_count`` and ``views_count`` as
decimal fields that the view's or like's change sets in place (``HSET`` of the absolute
count the write read under the reel's row lock; the reel's version orders them). A warm
page is two round trips and no SQL: the user's slot (list + hash), then the page's reels
(one pipeline; on a cluster one per node, in parallel).

Measured on Redis 7.0, one user's full list (50 reels + sentinel): ``OBJECT ENCODING``
listpack; ``MEMORY USAGE`` 968 bytes with ten-digit reel ids (712 with ids below 100,
1,096 with thirteen digits). ``tests/integration/recent_reels/test_reels_cache.py``
measures it after 1,000 views.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from cache import checks, stats
from cache.client import NO_VALUE, CacheUnavailable
from cache.entities import (
    Entity,
    EntityStore,
    Fields,
    batch,
    encode,
    read_fields_commands,
    run_script,
    split_fields,
)
from cache.fill import read_through
from cache.keys import Keyspace, Scope, reel_tag, user_tag
from cache.scripts import LuaScript
from cache.versioned import Change
from storage import recent_reels as reels_store
from storage.recent_reels import ListEntry, ReelEntity

PATH = "recent_reels"
PATH_REELS = "recent_reels.reels"
SENTINEL = "_"
SENTINEL_SCORE = "-inf"
# A sorted set keeps its compact encoding up to 128 entries: N reels plus the sentinel.
MAX_CAPACITY = 127


def scope(user_id: int) -> Scope:
    return Scope(user_tag(user_id), "reels")


def key(keys: Keyspace, user_id: int) -> str:
    return keys.key(user_tag(user_id), "reels", "recent")


def mine_key(keys: Keyspace, user_id: int) -> str:
    """The user's view durations and likes of the reels in their list."""
    return keys.key(user_tag(user_id), "reels", "mine")


def scope_keys(keys: Keyspace, user_id: int) -> list[str]:
    """Every key of the user's ``reels`` scope (a change names them all)."""
    return [key(keys, user_id), mine_key(keys, user_id)]


def reel_scope(reel_id: int) -> Scope:
    return Scope(reel_tag(reel_id), "reel")


def reel_key(keys: Keyspace, reel_id: int) -> str:
    return keys.key(reel_tag(reel_id), "reel")


_ENTITIES: dict[tuple[str, int], Entity] = {}  # made once per reel and key prefix
MAX_ENTITIES = 65536


def reel_entity(keys: Keyspace, reel_id: int) -> Entity:
    """Where a reel's entity lives (remembered: a page names 20 of them per request)."""
    found = _ENTITIES.get((keys.prefix, reel_id))
    if found is None:
        found = Entity(reel_id, reel_scope(reel_id), reel_key(keys, reel_id))
        if len(_ENTITIES) >= MAX_ENTITIES:
            _ENTITIES.clear()
        _ENTITIES[(keys.prefix, reel_id)] = found
    return found


MINE_SENTINEL = "_"


@dataclass(frozen=True)
class RecentPage:
    """One page of a user's list (newest first) and the list's length."""

    total: int
    entries: list[ListEntry]


def page_of(entries: Sequence[ListEntry], start: int, count: int) -> RecentPage:
    """The page of a whole list, as ``read`` would give it from Redis."""
    return RecentPage(len(entries), list(entries[start : start + count]))


# KEYS: the list, the user's hash beside it. ARGV: first rank, last rank, idle TTL.
# Returns false unless both keys exist; else {length, reel, score, duration, liked, ...}
# for the page (newest first, the sentinel left out): the duration as stored ("" for
# null, also when its field is missing), liked "1" or "0". Both keys' TTLs are refreshed.
# One reply of 1 + 4 per reel, instead of the whole hash (two fields per reel in the list)
# parsed into a dict on every read.
READ_PAGE = LuaScript("""
if redis.call('EXISTS', KEYS[2]) == 0 then return false end
local size = redis.call('ZCARD', KEYS[1])
if size == 0 then return false end
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('EXPIRE', KEYS[2], ARGV[3])
local rows = redis.call('ZREVRANGE', KEYS[1], ARGV[1], ARGV[2], 'WITHSCORES')
local out = {size - 1}
for i = 1, #rows, 2 do
  local reel = rows[i]
  if reel ~= '""" + SENTINEL + """' then
    local mine = redis.call('HMGET', KEYS[2], 'd:' .. reel, 'l:' .. reel)
    out[#out + 1] = reel
    out[#out + 1] = rows[i + 1]
    out[#out + 1] = mine[1] or ''
    out[#out + 1] = mine[2] and '1' or '0'
  end
end
return out
""")


def read(redis: Any, keys: Keyspace, user_id: int, start: int, count: int, ttl: int) -> Any:
    """One round trip (one script call in the user's slot): the page and the length, or
    ``NO_VALUE`` if the list or the hash beside it is not cached. Refreshes the idle TTL
    of a list in use."""
    reply = run_script(redis, READ_PAGE, [key(keys, user_id), mine_key(keys, user_id)],
                       [start, start + count - 1, ttl])
    if not reply:
        return NO_VALUE
    liked = b"1"
    entries = [ListEntry(int(reply[i]), int(float(reply[i + 1])),
                         int(reply[i + 2]) if reply[i + 2] else None, reply[i + 3] == liked)
               for i in range(1, len(reply), 4)]
    return RecentPage(int(reply[0]), entries)


def _mine_fields(e: ListEntry) -> dict[str, str]:
    fields = {f"d:{e.reel_id}": "" if e.view_duration is None else str(e.view_duration)}
    if e.is_liked:
        fields[f"l:{e.reel_id}"] = "1"
    return fields


def stage(pipe: Any, temps: dict[str, str], keys: Keyspace, user_id: int,
          entries: Sequence[ListEntry]) -> None:
    """Write a whole list (from Postgres) into the fill's temporary keys."""
    mapping: dict[str, Any] = {SENTINEL: SENTINEL_SCORE}
    mapping.update({str(e.reel_id): e.viewed_at_ms for e in entries})
    pipe.zadd(temps[key(keys, user_id)], mapping)
    mine: dict[str, str] = {MINE_SENTINEL: "1"}
    for e in entries:
        mine.update(_mine_fields(e))
    pipe.hset(temps[mine_key(keys, user_id)], mapping=mine)


def record(
    change: Change,
    keys: Keyspace,
    user_id: int,
    upserted: Sequence[ListEntry],
    trimmed: Sequence[int],
    capacity: int,
    ttl: int,
) -> None:
    """Add to ``change`` the ops that turn the cached list (and the user's durations and
    likes beside it) into the committed one."""
    k, mk = key(keys, user_id), mine_key(keys, user_id)
    if upserted:
        args: list[str] = []
        mine: list[str] = []
        unliked: list[str] = []
        for e in upserted:
            args += [str(e.viewed_at_ms), str(e.reel_id)]
            for name, value in _mine_fields(e).items():
                mine += [name, value]
            if not e.is_liked:
                unliked.append(f"l:{e.reel_id}")
        change.op("ZADD", k, *args)
        change.op("HSET", mk, *mine)
        if unliked:
            change.op("HDEL", mk, *unliked)
    if trimmed:
        change.op("ZREM", k, *(str(r) for r in trimmed))
        change.op("HDEL", mk, *(f"{p}:{r}" for r in trimmed for p in ("d", "l")))
    # A bound, not the mechanism: ZREM above already removed exactly what Postgres did.
    change.op("ZREMRANGEBYRANK", k, "1", str(-(capacity + 1)))
    change.op("EXPIRE", k, str(ttl))
    change.op("EXPIRE", mk, str(ttl))


def on_like(change: Change, keys: Keyspace, user_id: int, reel_id: int, liked: bool) -> None:
    """The user's like of a reel in their list (``is_liked`` on their page)."""
    if liked:
        change.op("HSET", mine_key(keys, user_id), f"l:{reel_id}", "1")
    else:
        change.op("HDEL", mine_key(keys, user_id), f"l:{reel_id}")


def on_counts(change: Change, keys: Keyspace, reel_id: int, **counts: int) -> None:
    """A reel's counters (``likes_count``, ``views_count``), absolute, in place."""
    args: list[Any] = []
    for name, value in counts.items():
        args += [name, value]
    change.op("HSET", reel_key(keys, reel_id), *args)


def render_reel(reel: ReelEntity) -> dict[str, bytes]:
    """A reel's entity fields: each shared field's JSON value, rendered once."""
    return {
        "video_url": orjson.dumps(reel.video_url),
        "description": orjson.dumps(reel.description),
        "likes_count": b"%d" % reel.likes_count,
        "views_count": b"%d" % reel.views_count,
    }


# The fields of a reel's entity (``render_reel``), in the order a read asks for them.
REEL_FIELDS = (b"video_url", b"description", b"likes_count", b"views_count")


def _read_reels(r: Any, keys: list[str]) -> list[Sequence[Any]]:
    return split_fields(r, batch(r, read_fields_commands(r, keys, REEL_FIELDS)), len(keys),
                        REEL_FIELDS)[0]


def page_reels(app_state: Any, entries: Sequence[ListEntry]) -> dict[int, Fields]:
    """The entities of a page's reels: one round trip (one script call on a single Redis,
    a pipeline per node on a cluster), the missing ones one batched fill; Redis down:
    from Postgres. A reel that no longer exists is absent."""

    def load(ids: list[int]) -> dict[int, dict[str, bytes]]:
        with app_state.db.read() as session:
            return {i: render_reel(r)
                    for i, r in reels_store.reel_entities(session, ids).items()}

    keys = app_state.cache.keys
    entities = [reel_entity(keys, e.reel_id) for e in entries]
    store = EntityStore(app_state.filler, PATH_REELS)
    if not entities:
        return {}
    entity_keys = [entity.key for entity in entities]
    try:
        rows = app_state.cache.run(PATH_REELS, lambda r: _read_reels(r, entity_keys))
    except CacheUnavailable:
        stats.count(PATH_REELS, "fallback")
        return {i: encode(f) for i, f in load([e.id for e in entities]).items()}
    # A cached entity has every field (``render_reel``); an evicted one has none.
    found = [dict(zip(REEL_FIELDS, row, strict=True)) if row[0] is not None else {}
             for row in rows]
    return store.complete(entities, found, load)


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

    def fill() -> RecentPage:
        entries = app_state.filler.fill(
            PATH, scope(user_id), scope_keys(keys, user_id), load,
            lambda pipe, temps, data: stage(pipe, temps, keys, user_id, data)
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
    """The recently viewed list (ids, view times and its completeness mark) and the
    user's durations and likes beside it."""
    keys = deps.cache.keys
    user_scope, k, mk = scope(user_id), key(keys, user_id), mine_key(keys, user_id)
    cached = checks.peek(deps.cache, [("get", keys.version(user_scope)), ("zrange", k),
                                      ("hgetall", mk)])
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
    out = checks.differs(PATH, k, (got, marked), (want, True), user_id=user_id)
    mine_exists, mine = cached[2]
    if mine_exists:
        want_mine = {MINE_SENTINEL: "1"}
        for e in truth:
            want_mine.update(_mine_fields(e))
        out += checks.differs(PATH, mk, {f.decode(): v.decode() for f, v in mine.items()},
                              want_mine, user_id=user_id)
    return out


def rebuild(deps: checks.Deps, user_id: int) -> None:
    keys = deps.cache.keys
    deps.filler.fill(PATH, scope(user_id), scope_keys(keys, user_id), _load(deps, user_id),
                     lambda pipe, temps, data: stage(pipe, temps, keys, user_id, data))


def warm(deps: checks.Deps, user_id: int) -> None:
    """The list, the hash beside it and the entities of every reel in it."""
    capacity = deps.settings.max_recent_reel_views
    page = recent_page(deps, user_id, 0, capacity, _load(deps, user_id))
    page_reels(deps, page.entries)
