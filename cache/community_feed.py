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
- ``{u:<id>}:cf:colls``: the collectives the user belongs to (a set, ``s`` sentinel for
  "none"), scope ``u:<id>|cf_colls``; join/leave SADD/SREM it through the outbox. The
  shared structures here (recent, trending, snapshots, author sets, counts) hold every
  live post, public or not; pages are filtered per viewer on the way out with this set
  (posts with a ``collective_id`` only for its members; admins see all), so a join or a
  leave shows at the viewer's next page and nothing per viewer is copied. The set is read
  in the same pipeline as the page's cached count (``read_count``).
- ``{u:<id>}:cf:blocked``: the authors the user blocked (a set, ``s`` sentinel for
  "none"), scope ``u:<id>|cf_blocked``; a preferences change that sets
  ``blocked_users`` deletes it through the outbox (refilled on the next page). Read in
  the same pipeline as the page's count, with the count of those authors' posts in the
  counts hash (below), so ``total_count`` leaves them out as the pages do.
- ``{cf}:trending``: the trending set: the window (live posts of the last
  ``TRENDING_WINDOW_HOURS``, at most ``TRENDING_MAX_POSTS``) plus the head of the older
  posts (the best ``TAIL_HEAD`` of them, jobs/community_feed.py), score =
  API.md's formula x 10^6 as an integer (clamped below 2^53), ages measured from the
  reference time in ``{cf}:trending:ref``. ``{cf}:trending:floor`` is the key
  ``score:id`` of the head's last post, or empty when the older posts all fit in the head:
  above the floor the set holds every live post in exact order; below it, older posts are
  missing (a walk continues in Postgres, service/community_feed_trending.py). Rebuilt by
  the scheduled job every ``TRENDING_RECOMPUTE_INTERVAL`` s; between rebuilds each like,
  comment, view or new post re-scores its post (best effort, ``ZADD`` of the absolute
  score at the same reference time, only if the reference did not change meanwhile).
  Staleness: a missed update (Redis down, a race between two writers' re-scores, a
  rebuild in flight) lasts until the next rebuild, so a score is at most one interval
  (default 60 s) behind the committed counts, plus decay of at most one interval.
- ``{cf}:ts:<sid>``: the Redis copy of trending *snapshot* ``sid``: the ranking a walk
  reads from its first page to its last, so likes during the walk cannot move a post
  across the cursor (no repeat, no skip). Its truth is the Postgres row
  ``trending_snapshots.<sid>`` (ids and scores in rank order, the trending set's size at
  most, and its floor), so a copy lost to a flush or an eviction is restored
  (single-flight) from that row, and with Redis down pages are read from the row itself.
  Members as everywhere here; a sentinel at score 0 keeps an empty snapshot existing.
  The copy expires when its row does (``TRENDING_SNAPSHOT_TTL`` after it was taken).
  ``{cf}:ts:latest`` names the snapshot new walks share until it is
  ``TRENDING_SNAPSHOT_REUSE`` s old (``<sid>`` or ``<sid>:<floor score>:<floor id>``), so
  at most TTL/REUSE snapshots exist (60 x <= 11,000 entries by default). Choice
  documented here: a snapshot per walk (shared by walks that
  start together) rather than a cursor carrying the ranking, because a cursor must stay
  small and a ranking of 10,000 posts is not. The walk itself: service/community_feed_trending.py.
- ``{cf}:counts``: cached ``total_count`` per (feed, filters, ...), scope ``cf|posts``: a
  create or delete deletes it; a count is written only if that scope's version did not
  move while it was computed. A value is grouped by collective, ``[public, {"<cid>": n}]``
  (JSON), shared by all viewers: a viewer's count is ``public`` plus the entries of the
  collectives they belong to (all of them for admins). Its size grows with the number of
  collectives holding matching posts (one entry each). A blocker's field
  ``["b", <user>, <count field>]`` holds the same count for their blocked authors' posts
  only, prefixed with the digest of the blocked set it was computed for
  (``<digest>:[public, {...}]``): a value for another set is recomputed, never used.
  A page's filter probe (``["m", asset, tags]``: how many live posts match, capped)
  lives here too, so a filter no post matches is answered from Redis; a probe is written
  only while the hash holds fewer than ``PROBE_FIELDS_MAX`` fields.

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

import contextlib
import hashlib
import json
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from cache import checks, stats
from cache import posts as cache_posts
from cache.client import NO_VALUE, Cache, CacheUnavailable
from cache.entities import batch, script_command
from cache.fill import read_through
from cache.keys import Keyspace, Scope, user_tag
from cache.lease import Lease, LeaseHeld, wait_for
from cache.scripts import LuaScript
from cache.versioned import PUBLISH, Change, publish_keys
from storage import posts as posts_store

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


def colls_scope(user_id: int) -> Scope:
    return Scope(user_tag(user_id), "cf_colls")


def blocked_scope(user_id: int) -> Scope:
    return Scope(user_tag(user_id), "cf_blocked")


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
    def trending_floor(self) -> str:
        return self.keys.key(TAG, "trending", "floor")

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

    def collectives(self, user_id: int) -> str:
        return self.keys.key(user_tag(user_id), "cf", "colls")

    def blocked(self, user_id: int) -> str:
        return self.keys.key(user_tag(user_id), "cf", "blocked")


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
    # Like the recent set: past N members the trim takes the sentinel (score 0, rank 0)
    # first, so a trimmed set is marked incomplete and walks continue in Postgres.
    author_change.op("ZREMRANGEBYRANK", akey, 0, -(author_size + 1))


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


def membership_changed(change: Change, ck: CommunityKeys, user_id: int, collective_id: int,
                       member: bool) -> None:
    key = ck.collectives(user_id)
    if member:
        change.op("SADD", key, str(collective_id))
    else:
        change.op("SREM", key, str(collective_id))


def blocked_changed(change: Change, ck: CommunityKeys, user_id: int) -> None:
    """The user's blocked authors changed: drop their cached set (refilled on next read)."""
    change.op("DEL", ck.blocked(user_id))


# Re-score one post if the trending set exists and its reference time is still ARGV[1];
# else answer the reference it has now ('' if none): a string, where a re-score answers
# a number.
RESCORE = LuaScript("""
local ref = redis.call('GET', KEYS[2])
if ref ~= ARGV[1] then return ref or '' end
if ARGV[4] == 'rem' then return redis.call('ZREM', KEYS[1], ARGV[3]) end
if ARGV[4] == 'xx' then return redis.call('ZADD', KEYS[1], 'XX', ARGV[2], ARGV[3]) end
return redis.call('ZADD', KEYS[1], ARGV[2], ARGV[3])
""")


class Rescore:
    """A post's trending re-score as a rider of its write's apply pipeline
    (``cache.outbox.Rider``: no round trip of its own), computed at ``ref``, the
    reference time the process last saw. After the pipeline, ``moved`` is the set's
    reference if it was not ``ref`` any more (None: it was, or the pipeline did not
    run): then the score must be computed again at that reference (``rescore``)."""

    def __init__(self, keys: Keyspace, post_id: int, score: int | None, ref: str,
                 new: bool = False) -> None:
        ck = CommunityKeys(keys)
        self.keys = [ck.trending, ck.trending_ref]
        mode = "rem" if score is None else ("add" if new else "xx")
        self.args = [ref, score or 0, member(post_id), mode]
        self.moved: str | None = None

    def queue(self, pipe: Any) -> int:
        RESCORE(keys=self.keys, args=self.args, client=pipe)
        return 1

    def done(self, replies: list[Any]) -> None:
        if isinstance(replies[0], bytes):
            self.moved = replies[0].decode()


def trending_ref(cache: Cache, path: str) -> str | None:
    raw = cache.run(path, lambda r: r.get(CommunityKeys(cache.keys).trending_ref))
    return None if raw is None else raw.decode()


def rescore(cache: Cache, path: str, post_id: int, score: int | None, ref: str,
            new: bool = False) -> None:
    """Set a post's trending score computed at ``ref`` (only if it is in the set, unless
    ``new``), or remove it with ``score=None``. Raises ``CacheUnavailable``."""
    ck = CommunityKeys(cache.keys)
    mode = "rem" if score is None else ("add" if new else "xx")
    cache.run(path, lambda r: RESCORE(
        keys=[ck.trending, ck.trending_ref], args=[ref, score or 0, member(post_id), mode],
        client=r))


# --- read side ------------------------------------------------------------------------------

# KEYS: sorted sets. ARGV: max score, after-member ('' = none: include max), n.
# For each key: {exists, complete, m1, s1, m2, s2...}: up to n entries strictly after
# (max, after) in (score desc, member desc) order, sentinel excluded.
RANGE_AFTER = LuaScript("""
local out = {}
local after, n = ARGV[2], tonumber(ARGV[3])
for i = 1, #KEYS do
  local key = KEYS[i]
  local maxs = ARGV[1]
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
""")


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
    raw = cache.run(path, lambda r: RANGE_AFTER(keys=keys, args=argv, client=r))
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


def stage_collectives(pipe: Any, temp: str, collective_ids: Sequence[int]) -> None:
    pipe.sadd(temp, SENTINEL, *[str(c) for c in collective_ids])


def stage_blocked(pipe: Any, temp: str, author_ids: Sequence[int]) -> None:
    pipe.sadd(temp, SENTINEL, *[str(a) for a in author_ids])


def read_ids(key: str) -> Callable[[Any], Any]:
    """A ``poll(redis)`` for ``Filler.fill_or_wait``: the cached id set under ``key``
    (collectives, blocked authors: a frozenset), or ``NO_VALUE``."""

    def run(r: Any) -> Any:
        pipe = r.pipeline(transaction=False)
        pipe.exists(key)
        pipe.smembers(key)
        return _parse_ids(*pipe.execute())

    return run


def _parse_ids(exists: Any, members: Any) -> Any:
    if not exists:
        return NO_VALUE
    return frozenset(int(m) for m in members if m != SENTINEL.encode())


# --- trending snapshots -----------------------------------------------------------------------

# KEYS: trending, trending ref, trending floor. ARGV: cap. Returns {ref, floor, m1, s1, ...}
# (best first, at most cap entries, sentinel excluded) read atomically, or false when the
# set or ref is missing.
READ_TRENDING = LuaScript("""
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
local ref = redis.call('GET', KEYS[2])
if not ref then return false end
local out = {ref, redis.call('GET', KEYS[3]) or ''}
local rows = redis.call('ZREVRANGEBYSCORE', KEYS[1], '+inf', '(0', 'WITHSCORES',
                        'LIMIT', 0, tonumber(ARGV[1]))
for _, v in ipairs(rows) do out[#out + 1] = v end
return out
""")


def snapshot_scope() -> Scope:
    return Scope(TAG, "ts")


Floor = tuple[int, int] | None  # (score, id) below which a set misses older posts


def encode_floor(floor: Floor) -> str:
    return "" if floor is None else f"{floor[0]}:{floor[1]}"


def decode_floor(raw: bytes | str) -> Floor:
    text = raw.decode() if isinstance(raw, bytes) else raw
    if not text:
        return None
    score, post_id = text.split(":")
    return int(score), int(post_id)


def read_trending(cache: Cache, path: str,
                  cap: int) -> tuple[str, Floor, list[tuple[int, int]]] | None:
    """The trending set's reference time, floor and best ``cap`` ``(score, id)`` entries,
    in one atomic read; None if the set is missing. Raises ``CacheUnavailable``."""
    ck = CommunityKeys(cache.keys)
    raw = cache.run(path, lambda r: READ_TRENDING(
        keys=[ck.trending, ck.trending_ref, ck.trending_floor], args=[cap + 1], client=r))
    if not raw:
        return None
    flat = raw[2:]
    entries = [(int(float(flat[i + 1])), int(flat[i])) for i in range(0, len(flat), 2)]
    floor = decode_floor(raw[1])
    if len(entries) > cap:  # cut short: the copy is complete only down to its last entry
        entries = entries[:cap]
        if floor is None or entries[-1] > floor:
            floor = entries[-1]
    return raw[0].decode(), floor, entries


def _pointer(sid: int, floor: Floor) -> str:
    return str(sid) if floor is None else f"{sid}:{encode_floor(floor)}"


def snapshot_pointer(cache: Cache, path: str) -> tuple[int, Floor] | None:
    """The snapshot new walks share right now, if any, and its floor. Raises
    ``CacheUnavailable``."""
    return _decode_pointer(cache.run(
        path, lambda r: r.get(CommunityKeys(cache.keys).latest_snapshot)))


def _decode_pointer(raw: bytes | None) -> tuple[int, Floor] | None:
    if raw is None:
        return None
    sid, _, floor = raw.decode().partition(":")
    return int(sid), decode_floor(floor)


def _stage_snapshot(pipe: Any, key: str, temp: str, entries: Sequence[tuple[int, int]],
                    ttl: int) -> None:
    pipe.delete(temp)
    stage_sorted(pipe, temp, entries, complete=True)  # the sentinel: never an empty zset
    pipe.expire(temp, ttl)
    pipe.renamenx(temp, key)
    pipe.delete(temp)


def store_snapshot(cache: Cache, path: str, sid: int, entries: Sequence[tuple[int, int]],
                   ttl: int, pointer_ttl: int, floor: Floor = None) -> None:
    """Copy a new snapshot into Redis (expiring in ``ttl`` s; an existing copy is kept:
    snapshots are immutable) and, if ``pointer_ttl`` > 0, make it the one new walks share
    for that many seconds. Raises ``CacheUnavailable``."""
    ck = CommunityKeys(cache.keys)
    key = ck.snapshot(sid)

    def run(r: Any) -> None:
        pipe = r.pipeline(transaction=False)
        _stage_snapshot(pipe, key, cache.keys.temp(key, uuid.uuid4().hex), entries,
                        max(ttl, 1))
        if pointer_ttl > 0:
            pipe.set(ck.latest_snapshot, _pointer(sid, floor), ex=pointer_ttl)
        pipe.execute()

    cache.run(path, run)


def share_snapshot(cache: Cache, path: str, sid: int, pointer_ttl: int,
                   floor: Floor = None) -> None:
    """Make snapshot ``sid`` the one new walks share for ``pointer_ttl`` seconds."""
    if pointer_ttl > 0:
        cache.run(path, lambda r: r.set(CommunityKeys(cache.keys).latest_snapshot,
                                        _pointer(sid, floor), ex=pointer_ttl))


def restore_snapshot(cache: Cache, path: str, sid: int,
                     load: Callable[[], tuple[list[tuple[int, int]], int] | None]) -> bool:
    """Restore the lost copy of snapshot ``sid``, single-flight: under a lease, ``load()``
    returns ``(entries, ttl)`` from its Postgres row (None: the row is gone). Returns False
    if the row is gone. Raises ``LeaseHeld`` if another process is restoring it, and
    ``CacheUnavailable``."""
    key = CommunityKeys(cache.keys).snapshot(sid)
    lease = Lease(cache.keys.lease(key), cache.lease_ttl_ms)
    if not cache.run(path, lease.take):
        raise LeaseHeld(key)
    try:
        data = load()
        if data is not None:
            entries, ttl = data

            def run(r: Any) -> None:
                pipe = r.pipeline(transaction=False)
                _stage_snapshot(pipe, key, cache.keys.temp(key, lease.token), entries,
                                max(ttl, 1))
                pipe.execute()

            cache.run(path, run)
    finally:
        with contextlib.suppress(CacheUnavailable):  # else the lease expires by itself
            cache.run(path, lease.release)
    return data is not None


def stage_trending(pipe: Any, temps: dict[str, str], ck: CommunityKeys,
                   entries: Sequence[tuple[int, int]], ref: str, floor: Floor = None) -> None:
    stage_sorted(pipe, temps[ck.trending], entries, complete=False)
    if not entries:
        pipe.zadd(temps[ck.trending], {SENTINEL: 0})  # an empty window still exists
    pipe.set(temps[ck.trending_ref], ref)
    pipe.set(temps[ck.trending_floor], encode_floor(floor))


# --- cached total counts ---------------------------------------------------------------------

# ARGV: version, field, value, ttl and optionally a cap: with it, a new field is written
# only while the hash holds fewer fields than that.
COUNT_SET = LuaScript("""
if (redis.call('GET', KEYS[1]) or '0') ~= ARGV[1] then return 0 end
if ARGV[5] and redis.call('HEXISTS', KEYS[2], ARGV[2]) == 0
   and redis.call('HLEN', KEYS[2]) >= tonumber(ARGV[5]) then return 0 end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
redis.call('EXPIRE', KEYS[2], tonumber(ARGV[4]))
return 1
""")


def count_field(*parts: object) -> str:
    return json.dumps(parts, separators=(",", ":"))


Grouped = tuple[int, dict[int, int]]  # (public posts, {collective id: posts})


def encode_grouped(value: Grouped) -> str:
    public, per = value
    return json.dumps([public, {str(c): n for c, n in sorted(per.items())}],
                      separators=(",", ":"))


def decode_grouped(raw: bytes | str) -> Grouped:
    public, per = json.loads(raw)
    return int(public), {int(c): int(n) for c, n in per.items()}


def blocked_field(viewer: int, field: str) -> str:
    """The counts-hash field of the posts ``viewer``'s blocked authors have in ``field``."""
    return count_field("b", viewer, field)


def blocked_digest(author_ids: Sequence[int]) -> str:
    return hashlib.sha1(json.dumps(sorted(author_ids)).encode()).hexdigest()[:16]


def encode_adjustment(digest: str, value: Grouped) -> str:
    return f"{digest}:{encode_grouped(value)}"


def decode_adjustment(raw: bytes | str) -> tuple[str, Grouped]:
    text = raw.decode() if isinstance(raw, bytes) else raw
    digest, _, value = text.partition(":")
    return digest, decode_grouped(value)


@dataclass
class PageState:
    """What a page reads before walking: its cached count, the posts-scope version copy it
    was read under, the viewer's collectives (``NO_VALUE``: not cached; None: not
    asked, e.g. anonymous callers and admins), their blocked authors (same) and the
    cached count of those authors' posts in the field with the digest of the blocked set
    it was computed for (None: not cached)."""

    count: Grouped | None
    version: str
    collectives: Any
    blocked: Any = None
    blocked_count: tuple[str, Grouped] | None = None
    ranges: list[KeyRange] | None = None  # the ``prefetch`` read, if asked
    pointer: tuple[int, Floor] | None = None  # the shared snapshot's pointer, if asked
    follows_version: str | None = None  # the followees set's version copy, if asked
    riders: list[Any] | None = None  # the raw replies of ``riders``, if any rode along


@dataclass(frozen=True)
class Prefetch:
    """A walk's first read (``range_after(keys, after, n)``), to ride with the page's
    count: its answer is ``PageState.ranges``."""

    keys: list[str]
    after: tuple[int, int] | None
    n: int


def read_count(cache: Cache, path: str, field: str, member_of: int | None = None,
               blocker: int | None = None, prefetch: Prefetch | None = None,
               pointer: bool = False, follows_of: int | None = None,
               riders: Sequence[tuple[Any, ...]] = ()) -> PageState:
    """The cached grouped count of ``field`` and the version copy, plus, if ``member_of``
    is a user id, that user's cached collectives, and if ``blocker`` is one, that user's
    cached blocked authors and the cached count of their posts in ``field``, the
    ``prefetch`` range read and, with ``pointer``, the shared trending snapshot's pointer
    (``snapshot_pointer``) and, if ``follows_of`` is a user id, the version copy of
    their followees set, in one batch (two slots: one round trip per node), and
    ``riders``, commands of the page's own (any slots; their raw replies are
    ``PageState.riders``). Raises ``CacheUnavailable``."""
    ck = CommunityKeys(cache.keys)
    vkey = cache.keys.version(posts_scope())

    def run(r: Any) -> PageState:
        commands: list[tuple[Any, ...]] = []
        if pointer:
            commands.append(("GET", ck.latest_snapshot))
        if prefetch is not None:
            p = prefetch
            argv = (["+inf", "", p.n] if p.after is None
                    else [str(p.after[0]), member(p.after[1]), p.n])
            commands.append(script_command(r, RANGE_AFTER, p.keys, argv))
        commands += [("GET", vkey), ("HGET", ck.counts, field)]
        if member_of is not None:
            colls_key = ck.collectives(member_of)
            commands += [("EXISTS", colls_key), ("SMEMBERS", colls_key)]
        if blocker is not None:
            blocked_key = ck.blocked(blocker)
            commands += [("EXISTS", blocked_key), ("SMEMBERS", blocked_key),
                         ("HGET", ck.counts, blocked_field(blocker, field))]
        if follows_of is not None:
            commands.append(("GET", cache.keys.version(follows_scope(follows_of))))
        reply = batch(r, [*commands, *riders])  # one round trip per node, raw replies
        extra = None
        if riders:
            reply, extra = reply[:len(commands)], reply[len(commands):]
        follows = None
        if follows_of is not None:
            follows = "" if reply[-1] is None else reply[-1].decode()
            reply = reply[:-1]
        ranges = shared = None
        if pointer:
            shared, reply = _decode_pointer(reply[0]), reply[1:]
        if prefetch is not None:
            ranges, reply = [_key_range(item) for item in reply[0]], reply[1:]
        version, value, rest = reply[0], reply[1], reply[2:]
        colls = blocked = adjust = None
        if member_of is not None:
            colls, rest = _parse_ids(rest[0], rest[1]), rest[2:]
        if blocker is not None:
            blocked = _parse_ids(rest[0], rest[1])
            adjust = None if rest[2] is None else decode_adjustment(rest[2])
        return PageState(None if value is None else decode_grouped(value),
                         "0" if version is None else version.decode(), colls, blocked,
                         adjust, ranges, shared, follows, extra)

    return cache.run(path, run)


def write_count(cache: Cache, path: str, field: str, value: Grouped | str, version: str,
                ttl: int, cap: int | None = None) -> None:
    """Cache a grouped count (or an encoded adjustment, or a probe) computed under
    posts-scope ``version`` (dropped if it moved; with ``cap``, also when the counts hash
    holds that many fields already)."""
    ck = CommunityKeys(cache.keys)
    vkey = cache.keys.version(posts_scope())
    raw = value if isinstance(value, str) else encode_grouped(value)
    args: list[Any] = [version, field, raw, ttl] + ([cap] if cap is not None else [])
    cache.run(path, lambda r: COUNT_SET(keys=[vkey, ck.counts], args=args, client=r))


# A page's filter probe (how many live posts match its filters, up to a cap: the page's
# plan, and 0 answers it) is kept in the counts hash too, under ``["m", asset, tags]``:
# dropped with the counts by every create and delete, written under the same version
# rule, and, since anyone can make up filters, only while the hash holds fewer than
# PROBE_FIELDS_MAX fields (past it a made-up filter costs its probe, not memory).
PROBE_FIELDS_MAX = 2048


def probe_field(asset_type: str | None, tags: Sequence[str]) -> str:
    return count_field("m", asset_type, list(tags))


def read_probe(cache: Cache, path: str, field: str) -> tuple[int | None, str]:
    """The cached probe of ``field`` (None: not cached) and the posts-scope version copy
    it is read under, in one round trip. Raises ``CacheUnavailable``."""
    vkey = cache.keys.version(posts_scope())
    counts = CommunityKeys(cache.keys).counts
    version, raw = cache.run(path, lambda r: batch(r, [("GET", vkey),
                                                       ("HGET", counts, field)]))
    return (None if raw is None else int(raw)), "0" if version is None else version.decode()


# --- batch fills (the following feed's author sets) ------------------------------------------


def fill_many(cache: Cache, filler: Any, path: str, targets: Sequence[tuple[Scope, str]],
              load: Any) -> set[str]:
    """Fill several single-key scopes in a few round trips, single-flight per key.

    ``load(indices)`` returns, for each target index given, ``(entries, complete)``.
    Keys whose lease another filler holds are skipped; returns the keys published.
    Raises ``CacheUnavailable``.
    """
    token = uuid.uuid4().hex  # one token for the batch: each key has its own lease
    leases = [Lease(cache.keys.lease(key), cache.lease_ttl_ms, token) for _, key in targets]

    def lease_all(r: Any) -> list[Any]:
        pipe = r.pipeline(transaction=False)
        for lease in leases:
            lease.queue_take(pipe)
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
            PUBLISH(
                keys=publish_keys(cache.keys, scope, leases[i].key, [(key, temp)]),
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


# --- the viewer's sets: followees, collectives, and authors' post sets ---------------------

PATH = "community_feed"


def fill_followees(deps: checks.Deps, user_id: int, after_miss: bool = False) -> list[int]:
    """Fill the user's followees set from Postgres (version-checked, single-flight: raises
    ``LeaseHeld`` while another fill runs, and with ``after_miss`` also when a fill landed
    since the caller's miss: read it then); returns what was loaded."""
    key = CommunityKeys(deps.cache.keys).followees(user_id)
    return deps.filler.fill(PATH, follows_scope(user_id), [key],
                            lambda: checks.sql(deps, posts_store.followees, user_id),
                            lambda pipe, temps, ids: stage_followees(pipe, temps[key], ids),
                            only_if_missing=after_miss)


def fill_collectives(deps: checks.Deps, user_id: int) -> list[int]:
    """Fill (replace) the user's collectives set from Postgres, as ``fill_followees``
    does (a repair; a read after a miss goes through ``collectives``)."""
    key = CommunityKeys(deps.cache.keys).collectives(user_id)
    return deps.filler.fill(PATH, colls_scope(user_id), [key],
                            lambda: checks.sql(deps, posts_store.collectives_of, user_id),
                            lambda pipe, temps, ids: stage_collectives(pipe, temps[key], ids))


def followees(deps: checks.Deps, user_id: int) -> list[int]:
    """The user's followees: the cached set, filled from Postgres on a miss."""
    read = followees_reader(deps.cache.keys, user_id)
    return sorted(read_through(
        deps.cache, PATH + ":followees", read,
        lambda: fill_followees(deps, user_id, after_miss=True),
        lambda: checks.sql(deps, posts_store.followees, user_id)))


def followees_versioned(deps: checks.Deps, user_id: int) -> tuple[list[int], str | None]:
    """The user's followees and the version copy of their set as read with it (one
    round trip: the copy first, so a change applied in between leaves an older copy
    beside the newer set, never the reverse), or, on a miss or with Redis down, what
    ``followees`` answers and None."""
    key = CommunityKeys(deps.cache.keys).followees(user_id)
    vkey = deps.cache.keys.version(follows_scope(user_id))

    def read() -> tuple[list[int], str] | None:
        version, exists, members = deps.cache.run(
            PATH + ":followees",
            lambda r: batch(r, [("GET", vkey), ("EXISTS", key), ("SMEMBERS", key)]))
        if not exists or version is None:
            return None
        return sorted(int(m) for m in members if m != SENTINEL.encode()), version.decode()

    try:
        got = read()
        if got is not None:
            stats.count(PATH + ":followees", "hit")
            return got
        authors = followees(deps, user_id)  # filled (or read from Postgres)
        return read() or (authors, None)  # the fill's set with its copy, if it landed
    except CacheUnavailable:
        return followees(deps, user_id), None


def collectives(deps: checks.Deps, user_id: int) -> frozenset[int]:
    """The user's collectives after the page's read missed them (``_id_set``)."""
    key = CommunityKeys(deps.cache.keys).collectives(user_id)
    return _id_set(deps, colls_scope(user_id), key,
                   lambda: checks.sql(deps, posts_store.collectives_of, user_id),
                   stage_collectives)


def _id_set(deps: checks.Deps, scope: Scope, key: str, load: Callable[[], Sequence[int]],
            stage: Callable[[Any, str, Sequence[int]], None]) -> frozenset[int]:
    """An id set the caller found missing: ``Filler.fill_or_wait`` (one load per
    stampede: a request that finds another's fill running or landed reads that set, for
    up to ``lease_wait_ms``, then loads without writing); ``load()`` from Postgres when
    Redis is unusable."""
    try:
        return frozenset(deps.filler.fill_or_wait(
            PATH, scope, [key], load, lambda pipe, temps, ids: stage(pipe, temps[key], ids),
            read_ids(key)))
    except CacheUnavailable:
        stats.count(PATH, "fallback")
        return frozenset(load())


def fill_author_sets(deps: checks.Deps, authors: Sequence[int]) -> set[str]:
    """Fill the authors' post sets (newest ``AUTHOR_CACHE_SIZE`` keys each) in a few round
    trips, single-flight per set; returns the keys published."""
    ck = CommunityKeys(deps.cache.keys)
    size = deps.settings.author_cache_size
    targets = [(author_scope(a), ck.author(a)) for a in authors]

    def load(indices: list[int]) -> dict[int, tuple[list[tuple[int, int]], bool]]:
        per = checks.sql(deps, posts_store.author_recent_keys, [authors[i] for i in indices],
                         size + 1)
        return {i: (per[authors[i]][:size], len(per[authors[i]]) <= size) for i in indices}

    return fill_many(deps.cache, deps.filler, PATH, targets, load)


def blocked(deps: checks.Deps, user_id: int) -> frozenset[int]:
    """The authors the user blocked, after the page's read missed them (``_id_set``)."""
    key = CommunityKeys(deps.cache.keys).blocked(user_id)
    return _id_set(deps, blocked_scope(user_id), key,
                   lambda: checks.sql(deps, posts_store.blocked_by, user_id), stage_blocked)


def author_ranges(deps: checks.Deps, authors: Sequence[int], after: tuple[int, int] | None,
                  n: int) -> tuple[list[KeyRange], str]:
    """Up to ``n`` keys strictly after ``after`` of each author's set (the following
    feed's fan-out on read), and the outcome: ``hit``, or ``miss`` when some sets were
    missing and were filled. Raises ``CacheUnavailable`` (-> Postgres) when Redis fails or
    a set is still missing after the fill (another request holds its lease)."""
    ck = CommunityKeys(deps.cache.keys)
    keys = [ck.author(a) for a in authors]
    ranges = range_after(deps.cache, PATH, keys, after, n)
    missing = [a for a, r in zip(authors, ranges, strict=True) if r.entries is None]
    if not missing:
        return ranges, "hit"
    fill_author_sets(deps, missing)
    ranges = range_after(deps.cache, PATH, keys, after, n)
    if any(r.entries is None for r in ranges):
        raise CacheUnavailable(PATH)
    return ranges, "miss"


# --- the recent set -------------------------------------------------------------------------


def fill_recent(deps: checks.Deps) -> list[tuple[int, int]]:
    """Fill ``{cf}:recent`` from Postgres if it is missing: the newest
    ``RECENT_CACHE_SIZE`` keys, complete when that is all of them (version-checked,
    single-flight: raises ``LeaseHeld`` while another fill runs)."""
    ck = CommunityKeys(deps.cache.keys)
    size = deps.settings.recent_cache_size

    def stage(pipe: Any, temps: dict[str, str], keys: list[tuple[int, int]]) -> None:
        stage_sorted(pipe, temps[ck.recent], keys[:size], complete=len(keys) <= size)

    return deps.filler.fill(PATH, posts_scope(), [ck.recent],
                            lambda: checks.sql(deps, posts_store.recent_keys, size + 1),
                            stage, only_if_missing=True)


def recent_after(deps: checks.Deps, after: tuple[int, int] | None, n: int
                 ) -> tuple[KeyRange, str]:
    """Up to ``n`` keys of the recent set strictly after ``after``, and the outcome:
    ``hit``, or ``miss`` when the set was missing and a fill (this request's, or a
    concurrent one's, polled for up to ``lease_wait_ms``) landed: a stampede of misses
    costs one load, not one per request. Raises ``CacheUnavailable`` (-> Postgres) when
    Redis fails or no fill lands in time."""
    ck = CommunityKeys(deps.cache.keys)

    def read() -> Any:
        rng = range_after(deps.cache, PATH, [ck.recent], after, n)[0]
        return NO_VALUE if rng.entries is None else rng

    rng = read()
    if rng is not NO_VALUE:
        return rng, "hit"
    with contextlib.suppress(LeaseHeld):  # another request fills it: wait for its fill
        fill_recent(deps)
    rng = read()
    if rng is NO_VALUE:
        rng = wait_for(read, deps.cache.lease_wait_ms)
    if rng is NO_VALUE:
        raise CacheUnavailable(PATH)
    return rng, "miss"


# --- a page's cached counts -----------------------------------------------------------------


def grouped_count(deps: checks.Deps, field: str, page: PageState | None,
                  compute: Callable[[], Grouped]) -> Grouped:
    """A page's grouped count: the cached one read with the page (``page``), else
    ``compute()``, cached under the version the page was read under (not with Redis
    down: ``page`` None)."""
    if page is not None and page.count is not None:
        return page.count
    value = compute()
    if page is not None:
        with contextlib.suppress(CacheUnavailable):
            write_count(deps.cache, PATH, field, value, page.version, deps.settings.idle_ttl)
    return value


def blocked_grouped_count(deps: checks.Deps, viewer: int, field: str, page: PageState,
                          blocked_ids: frozenset[int],
                          compute: Callable[[Sequence[int]], Grouped]) -> Grouped:
    """The grouped count of the posts of ``viewer``'s blocked authors in ``field``: the
    cached one read with the page if it was computed for this blocked set (its digest
    rides with the value), else ``compute(sorted ids)``, cached beside the count."""
    digest = blocked_digest(blocked_ids)
    if page.blocked_count is not None and page.blocked_count[0] == digest:
        return page.blocked_count[1]
    value = compute(sorted(blocked_ids))
    with contextlib.suppress(CacheUnavailable):
        write_count(deps.cache, PATH, blocked_field(viewer, field),
                    encode_adjustment(digest, value), page.version, deps.settings.idle_ttl)
    return value


# --- the operator's check / rebuild / warm (see cache/checks.py) ----------------------------


def check(deps: checks.Deps, user_id: int) -> list[checks.Difference]:
    """The user's followees and collectives sets and their own author set."""
    keys = deps.cache.keys
    ck = CommunityKeys(keys)
    size = deps.settings.author_cache_size
    follows, author, colls = follows_scope(user_id), author_scope(user_id), colls_scope(user_id)
    head = checks.peek(deps.cache, [
        ("get", keys.version(follows)), ("smembers", ck.followees(user_id)),
        ("get", keys.version(author)), ("zrange", ck.author(user_id)),
        ("get", keys.version(colls)), ("smembers", ck.collectives(user_id)),
    ])
    scopes = [follows, author, colls]
    before = checks.versions(deps, scopes)
    with deps.db.read() as session:
        followee_ids = sorted(posts_store.followees(session, user_id))
        member_of = posts_store.collectives_of(session, user_id)
        newest = posts_store.author_recent_keys(session, [user_id], size + 1)[user_id]
    after = checks.versions(deps, scopes)
    out: list[checks.Difference] = []
    who = {"user_id": user_id}
    exists, raw = head[1]
    if exists and checks.settled(checks.version_copy(head[0]), before, after, follows):
        got = sorted(int(m) for m in raw if m != SENTINEL.encode())
        out += checks.differs(PATH, ck.followees(user_id), got, followee_ids, **who)
    exists, raw = head[5]
    if exists and checks.settled(checks.version_copy(head[4]), before, after, colls):
        got = sorted(int(m) for m in raw if m != SENTINEL.encode())
        out += checks.differs(PATH, ck.collectives(user_id), got, member_of, **who)
    exists, raw = head[3]
    if exists and checks.settled(checks.version_copy(head[2]), before, after, author):
        got_keys = sorted(((int(s), int(m)) for m, s in raw if m != SENTINEL.encode()),
                          reverse=True)
        complete = any(m == SENTINEL.encode() for m, _ in raw)
        out += checks.differs(PATH, ck.author(user_id), (got_keys, complete),
                              (newest[:size], len(newest) <= size), **who)
    return out


def rebuild(deps: checks.Deps, user_id: int) -> None:
    fill_followees(deps, user_id)
    fill_collectives(deps, user_id)
    fill_author_sets(deps, [user_id])


def warm(deps: checks.Deps, user_id: int) -> None:
    """The following feed's first page inputs: followees, their author sets, collectives,
    and the posts of its first page with the user's likes (``cache/posts.py``)."""
    authors = followees(deps, user_id)
    ck = CommunityKeys(deps.cache.keys)
    keys = [ck.author(a) for a in authors]
    ranges = range_after(deps.cache, PATH, keys, None, 1) if authors else []
    missing = [a for a, r in zip(authors, ranges, strict=True) if r.entries is None]
    if missing:
        fill_author_sets(deps, missing)
    collectives(deps, user_id)
    if authors:
        first = sorted((k for r in range_after(deps.cache, PATH, keys, None, WARM_POSTS)
                        for k in r.entries or []), reverse=True)[:WARM_POSTS]
        cache_posts.page_posts(deps, [pid for _, pid in first], user_id)
    else:
        cache_posts.page_posts(deps, [], user_id)


WARM_POSTS = 50  # posts of a warmed following feed's first pages
