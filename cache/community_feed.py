"""Community feed key layout and every Redis operation on it (API section 3).

All keys share the hash tag ``{cf}`` (one Redis Cluster slot), except each user's
followee set, which lives under the user's own tag. Members are post ids zero-padded to
20 digits, so Redis's order among equal scores (member bytes) is the numeric id order:
every sorted set here orders by ``(score desc, id desc)``, exactly as the Postgres
fallback does, and a cursor key ``(score, id)`` is a total order.

Structures:

- ``{cf}:recent``: the newest ``RECENT_CACHE_SIZE`` live posts, score = ``created_at`` in
  integer microseconds (exact: below 2^53 until the year 2255). A sentinel member ``s`` at
  score 0 means "complete down to the first post"; a trim removes it, so a walk that runs
  off a trimmed set continues in Postgres with the same keyset. Scope ``cf|posts``:
  creates and deletes change it through the outbox (ZADD / ZREM / trim, idempotent).
- ``{cf}:a:<author>``: the author's newest ``AUTHOR_CACHE_SIZE`` posts, same scores and
  sentinel, scope ``cf|a:<author>``. The following feed merges these (fan-out on read).
- ``{u:<id>}:cf:followees``: the user's followees (a set, ``s`` sentinel for "none"), scope
  ``u:<id>|cf_follows``; follow/unfollow SADD/SREM it through the outbox.
- ``{cf}:trending``: the trending window (live posts of the last ``TRENDING_WINDOW_HOURS``,
  at most ``TRENDING_MAX_POSTS``), score = API.md's formula x 10^6 as an integer (clamped
  below 2^53), ages measured from the reference time in ``{cf}:trending:ref``. Rebuilt by
  the scheduled job every ``TRENDING_RECOMPUTE_INTERVAL`` s; between rebuilds each like,
  comment, view or new post re-scores its post (best effort, ``ZADD`` of the absolute
  score at the same reference time, only if the reference did not change meanwhile).
  Staleness: a missed update (Redis down, a race between two writers' re-scores, a
  rebuild in flight) lasts until the next rebuild, so a score is at most one interval
  (default 60 s) behind the committed counts, plus decay of at most one interval.
- ``{cf}:ts:<sid>``: a trending *snapshot*: an immutable copy (``COPY``) of the trending
  set taken when a walk starts; every page of that walk reads the snapshot, so likes
  during the walk cannot move a post across the cursor (no repeat, no skip). Walks that
  start within ``TRENDING_SNAPSHOT_REUSE`` s share one snapshot (``{cf}:ts:latest``), so
  at most TTL/REUSE snapshots exist (60 x <= 10,000 entries by default). Choice
  documented here: a snapshot zset per walk rather than a cursor carrying the ranking,
  because a cursor must stay small and a ranking of 10,000 posts is not.
- ``{cf}:counts``: cached ``total_count`` per (feed, filters, ...), scope ``cf|posts``: a
  create or delete deletes it; a count is written only if that scope's version did not
  move while it was computed.

Following: fan-out on read. One-off measurement on this machine (2 cores, local Redis 7,
author sets of 200 posts, a page of 21 merged in one Lua call incl. Python parsing):
F=10 followees 0.7 ms, F=100 6.3 ms, F=1000 180 ms per page. Fan-out on write of one
post, one pipelined ZADD per follower timeline: 1,000 followers 8.5 ms, 10,000 100 ms,
100,000 2.0 s of Redis time per post, plus one timeline per follower in memory. Typical
users follow tens to low hundreds of accounts, so reads stay in single-digit ms while
writes stay O(1) and memory O(posts). Known cost: a user following ~1,000+ accounts pays
~100+ ms per page; the fix would be the mix (a pre-merged per-user timeline for such
heavy followers), not done yet.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cache.client import NO_VALUE, Cache
from cache.keys import Keyspace, Scope, user_tag
from cache.versioned import Change

TAG = "cf"
SENTINEL = "s"
MAX_SCORE = 2**53 - 1
TRENDING_SCALE = 1_000_000


def member(post_id: int) -> str:
    return f"{post_id:020d}"


def posts_scope() -> Scope:
    return Scope(TAG, "posts")


def author_scope(author_id: int) -> Scope:
    return Scope(TAG, f"a:{author_id}")


def trending_scope() -> Scope:
    return Scope(TAG, "trending")


def follows_scope(user_id: int) -> Scope:
    return Scope(user_tag(user_id), "cf_follows")


class CommunityKeys:
    """Every key of the community feed, built from one ``Keyspace``."""

    def __init__(self, keys: Keyspace) -> None:
        self.keys = keys

    @property
    def recent(self) -> str:
        return self.keys.key(TAG, "recent")

    @property
    def trending(self) -> str:
        return self.keys.key(TAG, "trending")

    @property
    def trending_ref(self) -> str:
        return self.keys.key(TAG, "trending", "ref")

    @property
    def latest_snapshot(self) -> str:
        return self.keys.key(TAG, "ts", "latest")

    def snapshot(self, sid: str) -> str:
        return self.keys.key(TAG, "ts", sid)

    @property
    def counts(self) -> str:
        return self.keys.key(TAG, "counts")

    def author(self, author_id: int) -> str:
        return self.keys.key(TAG, "a", author_id)

    def followees(self, user_id: int) -> str:
        return self.keys.key(user_tag(user_id), "cf", "followees")


# --- scores -------------------------------------------------------------------------------


def trending_score(likes: int, comments: int, views: int, featured: bool,
                   created_s: float, ref_s: float) -> int:
    """API.md's trending score at reference time ``ref_s`` (epoch seconds), x 10^6 plus 1
    (so every post ranks above the sentinel at 0) as an integer below 2^53: exact in a
    Redis score and in a cursor."""
    age_hours = max((ref_s - created_s) / 3600.0, 0.1)
    raw = (likes + 2 * comments + 0.1 * views) / age_hours**1.5
    if featured:
        raw *= 1.5
    return min(int(round(raw * TRENDING_SCALE)) + 1, MAX_SCORE)


# --- write side: ops carried by a unit of work ----------------------------------------------


def post_created(posts_change: Change, author_change: Change, ck: CommunityKeys,
                 post_id: int, author_id: int, created_us: int, recent_size: int,
                 author_size: int) -> None:
    m = member(post_id)
    posts_change.op("ZADD", ck.recent, created_us, m)
    posts_change.op("ZREMRANGEBYRANK", ck.recent, 0, -(recent_size + 1))
    posts_change.op("DEL", ck.counts)
    akey = ck.author(author_id)
    author_change.op("ZADD", akey, created_us, m)
    # Rank 0 is the sentinel (score 0) while the set is complete: keep the newest N posts.
    author_change.op("ZREMRANGEBYRANK", akey, 1, -(author_size + 1))


def post_deleted(posts_change: Change, author_change: Change, ck: CommunityKeys,
                 post_id: int, author_id: int) -> None:
    m = member(post_id)
    posts_change.op("ZREM", ck.recent, m)
    posts_change.op("DEL", ck.counts)
    author_change.op("ZREM", ck.author(author_id), m)


def follow_changed(change: Change, ck: CommunityKeys, user_id: int, followee_id: int,
                   following: bool) -> None:
    key = ck.followees(user_id)
    if following:
        change.op("SADD", key, str(followee_id))
    else:
        change.op("SREM", key, str(followee_id))


# Re-score one post if the trending set exists and its reference time is still ARGV[1].
RESCORE_LUA = """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
if ARGV[4] == 'rem' then return redis.call('ZREM', KEYS[1], ARGV[3]) end
if ARGV[4] == 'xx' then return redis.call('ZADD', KEYS[1], 'XX', ARGV[2], ARGV[3]) end
return redis.call('ZADD', KEYS[1], ARGV[2], ARGV[3])
"""


def trending_ref(cache: Cache, path: str) -> str | None:
    raw = cache.run(path, lambda r: r.get(CommunityKeys(cache.keys).trending_ref))
    return None if raw is None else raw.decode()


def rescore(cache: Cache, path: str, post_id: int, score: int | None, ref: str,
            new: bool = False) -> None:
    """Set a post's trending score computed at ``ref`` (only if it is in the set, unless
    ``new``), or remove it with ``score=None``. Raises ``CacheUnavailable``."""
    ck = CommunityKeys(cache.keys)
    mode = "rem" if score is None else ("add" if new else "xx")
    cache.run(path, lambda r: r.eval(
        RESCORE_LUA, 2, ck.trending, ck.trending_ref, ref, score or 0, member(post_id),
        mode))


# --- read side ------------------------------------------------------------------------------

# KEYS: sorted sets. ARGV: max score, after-member ('' = none: include max), n.
# For each key: {exists, complete, m1, s1, m2, s2...}: up to n entries strictly after
# (max, after) in (score desc, member desc) order, sentinel excluded.
RANGE_AFTER_LUA = """
local out = {}
local maxs, after, n = ARGV[1], ARGV[2], tonumber(ARGV[3])
for i = 1, #KEYS do
  local key = KEYS[i]
  if redis.call('EXISTS', key) == 0 then
    out[i] = {0, 0}
  else
    local res = {1, redis.call('ZSCORE', key, 's') and 1 or 0}
    local got = 0
    if after ~= '' then
      local ties = redis.call('ZREVRANGEBYSCORE', key, maxs, maxs)
      for _, m in ipairs(ties) do
        if got < n and m ~= 's' and m < after then
          res[#res + 1] = m; res[#res + 1] = maxs; got = got + 1
        end
      end
      maxs = '(' .. maxs
    end
    if got < n then
      local rest = redis.call('ZREVRANGEBYSCORE', key, maxs, '(0', 'WITHSCORES',
                              'LIMIT', 0, n - got)
      for _, v in ipairs(rest) do res[#res + 1] = v end
    end
    out[i] = res
  end
end
return out
"""


@dataclass
class KeyRange:
    """What one sorted set held after a cursor: ``None`` entries = key missing."""

    entries: list[tuple[int, int]] | None  # (score, post_id), best first
    complete: bool  # the set holds everything down to the first post


def range_after(cache: Cache, path: str, keys: Sequence[str], after: tuple[int, int] | None,
                n: int) -> list[KeyRange]:
    """Up to ``n`` entries per key strictly after the ``after`` key, in one round trip.
    Raises ``CacheUnavailable``."""
    argv = ["+inf", "", n] if after is None else [str(after[0]), member(after[1]), n]
    raw = cache.run(path, lambda r: r.eval(RANGE_AFTER_LUA, len(keys), *keys, *argv))
    return [_key_range(item) for item in raw]


def _key_range(item: list[Any]) -> KeyRange:
    if not int(item[0]):
        return KeyRange(None, False)
    flat = item[2:]
    entries = [(int(float(flat[i + 1])), int(flat[i])) for i in range(0, len(flat), 2)]
    return KeyRange(entries, bool(int(item[1])))


def stage_sorted(pipe: Any, temp: str, entries: Sequence[tuple[int, int]],
                 complete: bool) -> None:
    """Write ``(score, post_id)`` entries (and the sentinel if complete) into ``temp``."""
    mapping: dict[str, int] = {member(pid): score for score, pid in entries}
    if complete:
        mapping[SENTINEL] = 0
    if mapping:
        pipe.zadd(temp, mapping)


def followees_reader(keys: Keyspace, user_id: int) -> Any:
    """A ``read(redis)`` for ``read_through``: the user's followee ids, or ``NO_VALUE``."""
    key = CommunityKeys(keys).followees(user_id)

    def read(r: Any) -> Any:
        pipe = r.pipeline(transaction=False)
        pipe.exists(key)
        pipe.smembers(key)
        exists, members = pipe.execute()
        if not exists:
            return NO_VALUE
        return sorted(int(m) for m in members if m != SENTINEL.encode())

    return read


def stage_followees(pipe: Any, temp: str, followee_ids: Sequence[int]) -> None:
    pipe.sadd(temp, SENTINEL, *[str(f) for f in followee_ids])


# --- trending snapshots -----------------------------------------------------------------------

# KEYS: latest pointer, trending, trending ref, new snapshot key. ARGV: new sid, ttl, reuse.
# Returns the pointer "sid|ref|taken_ms" (an existing one while younger than reuse s), or
# false when the trending set is missing (a fill is needed).
SNAPSHOT_LUA = """
local cur = redis.call('GET', KEYS[1])
if cur then return cur end
if redis.call('EXISTS', KEYS[2]) == 0 then return false end
local ref = redis.call('GET', KEYS[3])
if not ref then return false end
redis.call('COPY', KEYS[2], KEYS[4], 'REPLACE')
redis.call('EXPIRE', KEYS[4], tonumber(ARGV[2]))
local t = redis.call('TIME')
local ptr = ARGV[1] .. '|' .. ref .. '|' .. (t[1] * 1000 + math.floor(t[2] / 1000))
redis.call('SET', KEYS[1], ptr, 'EX', tonumber(ARGV[3]))
return ptr
"""


@dataclass(frozen=True)
class Snapshot:
    sid: str
    ref: str  # the trending reference time (epoch seconds, as stored)
    taken_ms: int


def take_snapshot(cache: Cache, path: str, ttl: int, reuse: int) -> Snapshot | None:
    """Start a trending walk: the shared recent snapshot, or a new copy of the trending
    set; None if the trending set is missing. Raises ``CacheUnavailable``."""
    ck = CommunityKeys(cache.keys)
    sid = uuid.uuid4().hex[:12]
    raw = cache.run(path, lambda r: r.eval(
        SNAPSHOT_LUA, 4, ck.latest_snapshot, ck.trending, ck.trending_ref,
        ck.snapshot(sid), sid, ttl, reuse))
    if not raw:
        return None
    sid, ref, taken = raw.decode().split("|")
    return Snapshot(sid, ref, int(taken))


def store_snapshot(cache: Cache, path: str, sid: str, entries: Sequence[tuple[int, int]],
                   ttl: int) -> None:
    """Store a recomputed snapshot under ``sid`` (NX: never replace a live one)."""
    key = CommunityKeys(cache.keys).snapshot(sid)
    temp = cache.keys.temp(key, uuid.uuid4().hex)

    def run(r: Any) -> None:
        pipe = r.pipeline(transaction=False)
        stage_sorted(pipe, temp, entries, complete=False)
        pipe.expire(temp, ttl)
        pipe.execute()
        if entries:
            r.renamenx(temp, key)
            r.delete(temp)

    cache.run(path, run)


def stage_trending(pipe: Any, temps: dict[str, str], ck: CommunityKeys,
                   entries: Sequence[tuple[int, int]], ref: str) -> None:
    stage_sorted(pipe, temps[ck.trending], entries, complete=False)
    if not entries:
        pipe.zadd(temps[ck.trending], {SENTINEL: 0})  # an empty window still exists
    pipe.set(temps[ck.trending_ref], ref)


# --- cached total counts ---------------------------------------------------------------------

COUNT_SET_LUA = """
if (redis.call('GET', KEYS[1]) or '0') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
redis.call('EXPIRE', KEYS[2], tonumber(ARGV[4]))
return 1
"""


def count_field(*parts: object) -> str:
    return json.dumps(parts, separators=(",", ":"))


def read_count(cache: Cache, path: str, field: str) -> tuple[int | None, str]:
    """(cached count or None, the posts scope's version copy as read). Raises
    ``CacheUnavailable``."""
    ck = CommunityKeys(cache.keys)
    vkey = cache.keys.version(posts_scope())

    def run(r: Any) -> tuple[int | None, str]:
        pipe = r.pipeline(transaction=False)
        pipe.get(vkey)
        pipe.hget(ck.counts, field)
        version, value = pipe.execute()
        return (None if value is None else int(value),
                "0" if version is None else version.decode())

    return cache.run(path, run)


def write_count(cache: Cache, path: str, field: str, value: int, version: str,
                ttl: int) -> None:
    """Cache a count computed under posts-scope ``version`` (dropped if it moved)."""
    ck = CommunityKeys(cache.keys)
    vkey = cache.keys.version(posts_scope())
    cache.run(path, lambda r: r.eval(COUNT_SET_LUA, 2, vkey, ck.counts, version, field,
                                     value, ttl))


# --- batch fills (the following feed's author sets) ------------------------------------------


def fill_many(cache: Cache, filler: Any, path: str, targets: Sequence[tuple[Scope, str]],
              load: Any) -> set[str]:
    """Fill several single-key scopes in a few round trips, single-flight per key.

    ``load(indices)`` returns, for each target index given, ``(entries, complete)``.
    Keys whose lease another filler holds are skipped; returns the keys published.
    Raises ``CacheUnavailable``.
    """
    from cache.versioned import publish_keys

    token = uuid.uuid4().hex

    def lease_all(r: Any) -> list[Any]:
        pipe = r.pipeline(transaction=False)
        for _, key in targets:
            pipe.set(cache.keys.lease(key), token, nx=True, px=cache.lease_ttl_ms)
        return pipe.execute()

    got = [i for i, ok in enumerate(cache.run(path, lease_all)) if ok]
    if not got:
        return set()
    versions = {i: filler.version(path, targets[i][0]) for i in got}
    data = load(got)
    published: set[str] = set()

    def publish(r: Any) -> list[Any]:
        pipe = r.pipeline(transaction=False)
        for i in got:
            scope, key = targets[i]
            temp = cache.keys.temp(key, token)
            pipe.delete(temp)
            entries, complete = data[i]
            stage_sorted(pipe, temp, entries, complete)
            filler.scripts.publish(
                keys=publish_keys(cache.keys, scope, cache.keys.lease(key), [(key, temp)]),
                args=[versions[i], cache.idle_ttl, token], client=pipe)
        return pipe.execute()

    results = cache.run(path, publish)
    # Each target queued delete + (zadd) + publish: the publish result is the last of each.
    flags = _publish_flags(results, [bool(data[i][0]) or data[i][1] for i in got])
    for i, ok in zip(got, flags, strict=True):
        if ok:
            published.add(targets[i][1])
    return published


def _publish_flags(results: list[Any], staged: list[bool]) -> list[bool]:
    flags, pos = [], 0
    for has_zadd in staged:
        pos += 1 + (1 if has_zadd else 0)
        flags.append(bool(results[pos]))
        pos += 1
    return flags
