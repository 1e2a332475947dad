"""The group feed in Redis: the user's groups, ``has_viewed`` per item and unread counts.

Key layout (prefix and hash tags as in ``cache/keys.py``):

``{u:<uid>}:rs:<gid>``  one string per (user, group), scope ``rs:<gid>`` of the user's tag.
    Bytes 0-3: the watermark W (unsigned 32-bit big-endian, bit offsets 0..31); then one
    bit per dense position p at bit offset ``32 + p``. Position p is viewed iff ``p <= W``
    or its bit is set. ~N/8 bytes for a group of N items.
``{u:<uid>}:groups``  the user's group ids plus a sentinel 0 (see "the user's groups").
``{g:<gid>}:live``  one string per group, scope ``live`` of the group's tag: bit p is set
    iff the item at position p exists and is not deleted.
``{g:<gid>}:items``  the group's newest live items (at most ``ITEMS_LIST_SIZE``), member =
    position, score = item id; same scope (see "the group's newest items" below).
``{g:<gid>}:item:<id>``  one item's entity (``cache/entities.py``): ``j`` = its rendered
    JSON without ``has_viewed``; same scope. Shared by every member.

``unread(u, g) = popcount(live AND NOT viewed)``, computed here from the two strings; the
two keys are in different slots, so they are fetched with plain GETs in one
non-transactional pipeline (no Lua or BITOP across slots), and no item is ever scanned.

Writes are ops of a committed ``Change`` (absolute, so replays are harmless):

- viewed p:   ``SETBIT rs 32+p 1``
- unread p:   ``DEL rs``: a bit op cannot clear p when ``p <= W`` without knowing W, which
  only Redis holds. The next read rebuilds the key from ``feed_item_views`` (one indexed
  query); marking unread is rare, so this keeps one key per (user, group).
- all viewed: ``SET rs "" KEEPTTL`` + ``SETBIT`` of the one-bits of the new W (the group's
  last position, read in the same snapshot as the SQL insert): O(1), at most 33 ops.
- item created / deleted at p: ``SETBIT live p 1`` / ``0`` (every user's count at once),
  ``ZADD`` + rank trim of the list / ``ZREMRANGEBYSCORE`` of its id and ``DEL`` of its
  entity (a new item's entity is cached by the first read that misses it).

Fills: ``rs`` from ``feed_item_views`` (W = 0, one bit per viewed position), ``live`` from
``feed_items``. Every path answers from Postgres alone when Redis is unavailable.

Measured (Redis 7.0, ``MEMORY USAGE``;
``tests/integration/group_feed/test_group_feed_cache.py``): at 1,000 items with 10% viewed,
232 bytes for ``rs`` + 72 for its version copy per (user, group); 80 bytes after a
mark-all; 232 bytes per group for ``live``. Alternatives measured at the same size: a second
bitmap for "unread below W" (+88 bytes per pair), interleaved viewed/unread bits (392
bytes), a set of absolute positions (296 bytes). Round trips on a hit: a feed page 1 and
0 SQL (one pipeline of two scripts: the list's page with its entities in the group's slot,
membership and the read state in the caller's; 2 when the read state is over
``RS_INLINE_BYTES``), one group's unread count 1, all groups 1 (2 when this process has
not answered the user yet, or their groups changed). A page past the cached list
(older than the newest ``ITEMS_LIST_SIZE`` items) reads its ids from Postgres (one
statement) and its bits in one round trip after the list's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson
import redis

from cache import checks, stats
from cache.client import NO_VALUE, Cache, CacheUnavailable, get_many, packed_client, pipelined
from cache.entities import JSON as ENTITY_JSON
from cache.entities import Entity, EntityStore, batch, queue_read, script_command
from cache.fill import Filler
from cache.keys import Keyspace, Scope, group_tag, user_tag
from cache.scripts import BITFIELD_IF_EXISTS, LuaScript
from cache.versioned import Change
from storage import group_feed as store
from storage import rebuild as rebuild_store
from storage.db import Database
from storage.models import FeedItem
from storage.times import isoformat

T = TypeVar("T")

PATH_PAGE = "group_feed.has_viewed"
PATH_UNREAD = "group_feed.unread"
PATH_LIVE = "group_feed.live"
PATH_ITEMS_LIST = "group_feed.items_list"
PATH_ITEMS = "group_feed.items"

HEADER_BYTES = 4
OFFSET = HEADER_BYTES * 8  # bit offset of position 0 in the rs string
MAX_WATERMARK = 2**32 - 1


# --- key layout ---------------------------------------------------------------------------


def scope(user_id: int, group_id: int) -> Scope:
    """The version scope of one user's read state in one group."""
    return Scope(user_tag(user_id), f"rs:{group_id}")


def key(keys: Keyspace, user_id: int, group_id: int) -> str:
    return keys.key(user_tag(user_id), "rs", group_id)


def live_scope(group_id: int) -> Scope:
    """The version scope of a group's live-items bitmap."""
    return Scope(group_tag(group_id), "live")


def live_key(keys: Keyspace, group_id: int) -> str:
    return keys.key(group_tag(group_id), "live")


def items_key(keys: Keyspace, group_id: int) -> str:
    """The group's newest live items: member = position, score = item id."""
    return keys.key(group_tag(group_id), "items")


def item_key(keys: Keyspace, group_id: int, item_id: int) -> str:
    """One item's entity (``cache/entities.py``), in the group's slot."""
    return keys.key(group_tag(group_id), "item", item_id)


# --- the user's groups -------------------------------------------------------------------
# The groups whose feeds the user may read. ``{u:<uid>}:groups`` is a set of group ids
# plus the sentinel ``0`` (group ids are positive), so a user in no group still has a key
# and an absent key always means "not cached". A membership change bumps the user's
# ``groups`` scope and deletes the cached set (``service/admin.py``); the next read
# rebuilds it from ``group_members``.
#
# Being in the same slot as the user's read states, a membership check rides in the same
# pipeline as the read-state lookups.

GROUPS_PATH = "memberships"  # the label of its hit/miss counters
GROUPS_SENTINEL = 0


def groups_scope(user_id: int) -> Scope:
    return Scope(user_tag(user_id), "groups")


def groups_key(keys: Keyspace, user_id: int) -> str:
    return keys.key(user_tag(user_id), "groups")


def queue_member_check(pipe: Any, keys: Keyspace, user_id: int, group_id: int) -> None:
    """Queue one atomic command answering "is the user in this group" (see ``parse_check``)."""
    pipe.smismember(groups_key(keys, user_id), [group_id, GROUPS_SENTINEL])


def parse_member_check(reply: list[int]) -> Any:
    """True / False, or ``NO_VALUE`` if the set is not cached."""
    is_member, cached = reply
    if not cached:
        return NO_VALUE
    return bool(is_member)


def queue_groups(pipe: Any, keys: Keyspace, user_id: int) -> None:
    pipe.smembers(groups_key(keys, user_id))


def parse_groups(reply: Iterable[bytes]) -> Any:
    """The user's group ids, or ``NO_VALUE`` if the set is not cached."""
    ids = {int(x) for x in reply}
    if GROUPS_SENTINEL not in ids:
        return NO_VALUE
    ids.discard(GROUPS_SENTINEL)
    return frozenset(ids)


def fill_groups(filler: Filler, user_id: int, load: Callable[[], list[int]],
         refresh: bool = False) -> frozenset[int]:
    """Rebuild the cached groups set from ``load()`` (the user's group ids from Postgres).

    If another process is filling it, waits briefly for that fill (then reads Postgres
    without writing). After a miss an existing set is read; ``refresh=True`` replaces it.
    Raises ``CacheUnavailable`` if Redis fails.
    """
    set_key = groups_key(filler.cache.keys, user_id)

    def stage(pipe: Any, temps: dict[str, str], ids: list[int]) -> None:
        pipe.sadd(temps[set_key], GROUPS_SENTINEL, *ids)

    def poll(r: Any) -> Any:
        return parse_groups(r.smembers(set_key))

    stats.count(GROUPS_PATH, "miss")
    return frozenset(filler.fill_or_wait(GROUPS_PATH, groups_scope(user_id), [set_key], load,
                                         stage, poll, refresh=refresh))

# --- values --------------------------------------------------------------------------------


def bitmap(positions: Iterable[int]) -> bytes:
    """Bit p (most significant bit first, as SETBIT counts) set for each position."""
    positions = list(positions)
    data = bytearray(max(positions) // 8 + 1 if positions else 0)
    for p in positions:
        data[p >> 3] |= 0x80 >> (p & 7)
    return bytes(data)


def bit_is_set(data: bytes, offset: int) -> bool:
    index = offset >> 3
    return index < len(data) and bool(data[index] & (0x80 >> (offset & 7)))


@dataclass(frozen=True)
class ReadState:
    """One user's read state in one group, as stored in the ``rs`` string."""

    watermark: int
    bits: bytes  # bit p = position p viewed; aligned with the live bitmap

    @classmethod
    def from_raw(cls, raw: bytes) -> ReadState:
        head = bytes(raw[:HEADER_BYTES]).ljust(HEADER_BYTES, b"\0")
        return cls(int.from_bytes(head, "big"), bytes(raw[HEADER_BYTES:]))

    @classmethod
    def from_positions(cls, positions: Iterable[int]) -> ReadState:
        return cls(0, bitmap(positions))

    def to_raw(self) -> bytes:
        return self.watermark.to_bytes(HEADER_BYTES, "big") + self.bits

    def viewed(self, position: int) -> bool:
        return position <= self.watermark or bit_is_set(self.bits, position)


def unread(live: bytes, state: ReadState) -> int:
    """Live positions not viewed: ``popcount(live AND NOT (bits OR 1..W))``."""
    size = max(len(live), len(state.bits))
    if size == 0:
        return 0
    nbits = size * 8
    live_int = int.from_bytes(live.ljust(size, b"\0"), "big")
    seen = int.from_bytes(state.bits.ljust(size, b"\0"), "big")
    top = min(state.watermark, nbits - 1) + 1  # offsets 0..W are the top bits
    seen |= ((1 << top) - 1) << (nbits - top)
    return (live_int & ~seen).bit_count()


# --- the group's newest items (rule 7: a warm page sends no SQL) ----------------------------
# ``{g:<gid>}:items`` holds the newest live items of the group: member = the item's
# position (decimal), score = its id (ids follow positions within a group, and stay far
# below 2^53, so scores are exact). At most ITEMS_LIST_SIZE entries (compact listpack).
# The member ``_`` at score 0 (ids are positive) says the list reaches the group's first
# item: without it the list holds exactly the live items whose id is at least its lowest
# score (a create trims the oldest, a delete removes its own; both keep that true), so a
# page that runs past its end is answered from Postgres. Scope: the group's ``live``.

ITEMS_LIST_SIZE = 128
ITEMS_SENTINEL = "_"
ITEMS_SENTINEL_SCORE = 0


@dataclass(frozen=True)
class ItemsList:
    """Part of the newest-items list: (id, position) newest first, and whether the list
    reaches the group's first item."""

    entries: list[tuple[int, int]]
    complete: bool

    def page(self, limit: int, before: int | None) -> list[tuple[int, int]] | None:
        """The page's (id, position)s, or None if the list cannot tell (past its end)."""
        entries = [e for e in self.entries if before is None or e[0] < before][:limit]
        if len(entries) == limit or self.complete:
            return entries
        return None


def parse_items(reply: Sequence[tuple[bytes, float]]) -> ItemsList:
    entries, complete = [], False
    for member, score in reply:
        if member == ITEMS_SENTINEL.encode():
            complete = True
        else:
            entries.append((int(score), int(member)))
    return ItemsList(entries, complete)


def _stage_items(pipe: Any, temp: str, rows: Sequence[tuple[int, int]]) -> None:
    mapping: dict[str, float] = {str(position): item_id for item_id, position in rows}
    if len(rows) < ITEMS_LIST_SIZE:
        mapping[ITEMS_SENTINEL] = ITEMS_SENTINEL_SCORE
    pipe.zadd(temp, mapping)


def render_item(item: FeedItem) -> dict[str, bytes]:
    """An item's entity fields: ``j``, its JSON object (FeedItemOut's fields and formats,
    ``service/group_feed.py``) without ``has_viewed`` and the closing brace, which each
    viewer's page appends."""
    return {"j": orjson.dumps({
        "id": item.id,
        "group": item.group_id,
        "title": item.title,
        "content_type": item.content_type,
        "author_id": item.author_id,
        "created_at": isoformat(item.created_at),
    })[:-1]}


def items_list_of(rows: Sequence[tuple[int, int]]) -> ItemsList:
    """What a fill of ``rows`` (the newest ITEMS_LIST_SIZE live items) caches."""
    return ItemsList(list(rows), len(rows) < ITEMS_LIST_SIZE)


@dataclass(frozen=True)
class CachedPage:
    """A page from the cache: ``items`` as (rendered JSON fragment, has_viewed)."""

    member: bool
    items: list[tuple[bytes, bool]]


# --- a warm page in one round trip: two script calls, one per slot ---------------------------
# One pipeline of READ_PAGE, in the group's slot (the list's page: ids, positions and each
# item's rendered ``j``, read atomically), and VIEWED_STATE, in the caller's slot
# (membership and the read state itself when it is at most RS_INLINE_BYTES); the page's
# ``has_viewed`` are read from those bytes. A bigger read state (a group of more than
# ~8,000 items) is asked for the page's positions alone, a second round trip
# (VIEWED_AMONG). Two replies per page instead of one per item: the per-item commands of
# a pipeline (packing, one reply each) were most of a warm page's CPU. READ_PAGE names the
# entity keys from ARGV[1], the group's ``item:`` prefix, which carries the group's hash
# tag: every key it reads is in KEYS[1]'s slot.

RS_INLINE_BYTES = 1024

# KEYS: the items list. ARGV: entity key prefix, ZREVRANGEBYSCORE max, limit. Returns false
# if the list is missing; {0} if the page runs past the list's end (Postgres answers);
# else {1, "id,id,...", "pos,pos,...", j or false per item}.
READ_PAGE = LuaScript("""
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
local limit = tonumber(ARGV[3])
local rows = redis.call('ZREVRANGEBYSCORE', KEYS[1], ARGV[2], '-inf', 'WITHSCORES',
                        'LIMIT', 0, limit + 1)
local ids, positions, out = {}, {}, {1, '', ''}
local complete = false
for i = 1, #rows, 2 do
  if rows[i] == '""" + ITEMS_SENTINEL + """' then
    complete = true
  elseif #ids < limit then
    local id = string.format('%d', tonumber(rows[i + 1]))
    ids[#ids + 1] = id
    positions[#positions + 1] = rows[i]
    out[#out + 1] = redis.call('HGET', ARGV[1] .. id, 'j')
  end
end
if #ids < limit and not complete then return {0} end
out[2] = table.concat(ids, ',')
out[3] = table.concat(positions, ',')
return out
""")

_MEMBER_CHECK = """
local member = 1
if ARGV[1] ~= '' then
  local r = redis.call('SMISMEMBER', KEYS[1], ARGV[1], '""" + str(GROUPS_SENTINEL) + """')
  if r[2] == 0 then member = -1 elseif r[1] == 0 then return {0} end
end
"""

# KEYS: the user's groups set, the read state. ARGV: the group id ("" = no membership
# check), the most bytes of read state to return. Returns {0} for a non-member; else
# {member, state}: member 1, or -1 when the groups set is not cached; state absent when the
# read state is missing, false when it is longer than ARGV[2], else its bytes.
VIEWED_STATE = LuaScript(_MEMBER_CHECK + """
if redis.call('EXISTS', KEYS[2]) == 0 then return {member} end
if redis.call('STRLEN', KEYS[2]) > tonumber(ARGV[2]) then return {member, false} end
return {member, redis.call('GET', KEYS[2])}
""")

# KEYS: the user's groups set, the read state. ARGV: the group id ("" = no membership
# check), "pos,pos,...". Returns {0} for a non-member; else {member, viewed}: member 1, or
# -1 when the groups set is not cached; viewed absent when the read state is missing, else
# one "0"/"1" per position (viewed iff at or below the watermark, or its bit set).
VIEWED_AMONG = LuaScript(_MEMBER_CHECK + """
if redis.call('EXISTS', KEYS[2]) == 0 then return {member} end
local positions, args = {}, {'GET', 'u32', 0}
for p in string.gmatch(ARGV[2], '%d+') do
  p = tonumber(p)
  positions[#positions + 1] = p
  args[#args + 1] = 'GET'
  args[#args + 1] = 'u1'
  args[#args + 1] = """ + str(OFFSET) + """ + p
end
local fields = redis.call('BITFIELD_RO', KEYS[2], unpack(args))
local watermark, out = fields[1], {}
for i, p in ipairs(positions) do
  out[i] = (p <= watermark or fields[i + 1] == 1) and '1' or '0'
end
return {member, table.concat(out)}
""")

_VIEWED_CHAR = ord("1")


def viewed_in(raw: bytes, positions: Sequence[int]) -> list[bool]:
    """``has_viewed`` per position from a read state's bytes (``ReadState.viewed``, without
    building one): at or below the watermark, or its bit set."""
    watermark = int.from_bytes(raw[:HEADER_BYTES].ljust(HEADER_BYTES, b"\0"), "big")
    size = len(raw) * 8
    return [p <= watermark or (o < size and bool(raw[o >> 3] & (0x80 >> (o & 7))))
            for p in positions for o in (OFFSET + p,)]


# --- write side: the ops a committed change carries ----------------------------------------


def on_viewed(change: Change, keys: Keyspace, user_id: int, group_id: int, position: int
              ) -> None:
    change.op("SETBIT", key(keys, user_id, group_id), OFFSET + position, 1)


def on_unread(change: Change, keys: Keyspace, user_id: int, group_id: int) -> None:
    change.op("DEL", key(keys, user_id, group_id))


def on_all_viewed(change: Change, keys: Keyspace, user_id: int, group_id: int, watermark: int
                  ) -> None:
    if not 0 <= watermark <= MAX_WATERMARK:
        raise ValueError(f"watermark out of range: {watermark}")
    rs_key = key(keys, user_id, group_id)
    change.op("SET", rs_key, "", "KEEPTTL")
    for bit in range(OFFSET):
        if watermark >> (OFFSET - 1 - bit) & 1:
            change.op("SETBIT", rs_key, bit, 1)


def on_item_created(change: Change, keys: Keyspace, group_id: int, position: int,
                    item_id: int) -> None:
    """The item joins the live bitmap and the newest-items list (trimmed to its bound: a
    full list loses its oldest entry, the sentinel first). Its entity is cached by the
    first read that misses it (a change never creates a key)."""
    change.op("SETBIT", live_key(keys, group_id), position, 1)
    lkey = items_key(keys, group_id)
    change.op("ZADD", lkey, item_id, position)
    change.op("ZREMRANGEBYRANK", lkey, 0, -(ITEMS_LIST_SIZE + 1))


def on_item_deleted(change: Change, keys: Keyspace, group_id: int, position: int,
                    item_id: int) -> None:
    """Out of the live bitmap and the list; its entity dropped."""
    change.op("SETBIT", live_key(keys, group_id), position, 0)
    change.op("ZREMRANGEBYSCORE", items_key(keys, group_id), item_id, item_id)
    change.op("DEL", item_key(keys, group_id, item_id))


# --- read side ------------------------------------------------------------------------------


@dataclass(frozen=True)
class PageState:
    member: bool
    viewed: list[bool]


def viewed_from_bits(positions: Sequence[int], fields: Sequence[int]) -> list[bool]:
    """``has_viewed`` per position from a read state's BITFIELD reply: the u32 watermark,
    then one bit per position (viewed at or below the watermark, or its bit set)."""
    watermark = fields[0]
    return [p <= watermark or bool(b) for p, b in zip(positions, fields[1:], strict=True)]


# The groups each user was last answered with, per key prefix: which read states and live
# bitmaps ``all_unread`` reads beside the user's groups set, so that a warm answer is one
# round trip. Only a guess of which keys to read: the set read in the same round trip
# decides the groups, and a wrong guess costs the second round trip. Bounded: cleared
# when full.
# (prefix, user) -> (the groups this process last saw the user in, their state keys).
_GUESSED_GROUPS: dict[tuple[str, int], tuple[tuple[int, ...], list[str]]] = {}
MAX_GUESSED_USERS = 65536
_NO_GUESS: tuple[tuple[int, ...], list[str]] = ((), [])


def _state_keys(keys: Keyspace, user_id: int, groups: Sequence[int]) -> list[str]:
    """Each group's read state and live bitmap key, in that order (the slots differ)."""
    return [k for group_id in groups
            for k in (key(keys, user_id, group_id), live_key(keys, group_id))]


def _remember_groups(keys: Keyspace, user_id: int, groups: tuple[int, ...],
                     known: tuple[tuple[int, ...], list[str]]) -> list[str]:
    """Remember the user's groups (``known``: what was remembered); returns their state
    keys, built only when the groups changed."""
    if known[0] == groups:
        return known[1]
    if len(_GUESSED_GROUPS) >= MAX_GUESSED_USERS:
        _GUESSED_GROUPS.clear()
    state = _state_keys(keys, user_id, groups)
    _GUESSED_GROUPS[(keys.prefix, user_id)] = (groups, state)
    return state


class ReadStates:
    """Answers of the group feed's read paths: Redis first, Postgres when it must."""

    def __init__(self, cache: Cache, filler: Filler, db: Database) -> None:
        self.cache = cache
        self.filler = filler
        self.db = db
        self.entities = EntityStore(filler, PATH_ITEMS)

    # Loads from Postgres (what fills are made of).

    def _load_groups(self, user_id: int) -> Callable[[], list[int]]:
        def load() -> list[int]:
            with self.db.read() as session:
                return store.member_group_ids(session, user_id)

        return load

    def _load_state(self, user_id: int, group_id: int) -> ReadState:
        with self.db.read() as session:
            return ReadState.from_positions(store.viewed_positions(session, user_id, group_id))

    def _load_live(self, group_id: int) -> bytes:
        with self.db.read() as session:
            return bitmap(store.live_positions(session, group_id))

    # Fills: single flight; a loser of the lease waits for the winner's fill (briefly).

    def _fill(self, path: str, fill_scope: Scope, fill_key: str, load: Callable[[], T],
              stage: Callable[[Any, dict[str, str], T], None], parse: Callable[[bytes], T],
              refresh: bool = False) -> T:
        stats.count(path, "miss")

        def poll(r: Any) -> Any:
            raw = r.get(fill_key)
            return NO_VALUE if raw is None else parse(raw)

        return self.filler.fill_or_wait(path, fill_scope, [fill_key], load, stage, poll,
                                        refresh=refresh)

    def fill_state(self, user_id: int, group_id: int, path: str = PATH_UNREAD,
                   refresh: bool = False) -> ReadState:
        """Fill the user's read state in the group after a miss (``refresh``: replace it)."""
        rs_key = key(self.cache.keys, user_id, group_id)
        return self._fill(
            path, scope(user_id, group_id), rs_key,
            lambda: self._load_state(user_id, group_id),
            lambda pipe, temps, state: pipe.set(temps[rs_key], state.to_raw()),
            ReadState.from_raw,
            refresh,
        )

    def fill_live(self, group_id: int, refresh: bool = False) -> bytes:
        """Fill the group's live bitmap after a miss (``refresh``: replace it)."""
        lkey = live_key(self.cache.keys, group_id)
        return self._fill(
            PATH_LIVE, live_scope(group_id), lkey,
            lambda: self._load_live(group_id),
            lambda pipe, temps, data: pipe.set(temps[lkey], data),
            bytes,
            refresh,
        )

    def _after_member(self, user_id: int, group_id: int, check_member: bool,
                      reply: list[Any]) -> list[Any] | None:
        """``reply`` without its membership check's answer (queued first by
        ``queue_member_check`` when ``check_member``); None when the user is not a member."""
        if not check_member:
            return reply
        if not self._member(user_id, group_id, parse_member_check(reply[0])):
            return None
        return reply[1:]

    def _member(self, user_id: int, group_id: int, cached: Any) -> bool:
        if cached is not NO_VALUE:
            stats.count(GROUPS_PATH, "hit")
            return cached
        return group_id in fill_groups(self.filler, user_id, self._load_groups(user_id))

    def _load_items_list(self, group_id: int) -> list[tuple[int, int]]:
        with self.db.read() as session:
            return store.newest_item_positions(session, group_id, ITEMS_LIST_SIZE)

    def _load_items(self, group_id: int) -> Callable[[list[int]], dict[int, dict[str, bytes]]]:
        def load(ids: list[int]) -> dict[int, dict[str, bytes]]:
            with self.db.read() as session:
                return {item.id: render_item(item)
                        for item in store.live_items_by_id(session, group_id, ids)}

        return load

    def fill_items_list(self, group_id: int, refresh: bool = False) -> ItemsList:
        """Fill the group's newest-items list after a miss (``refresh``: replace it)."""
        lkey = items_key(self.cache.keys, group_id)

        def poll(r: Any) -> Any:
            reply = r.zrevrange(lkey, 0, -1, withscores=True)
            return parse_items(reply) if reply else NO_VALUE

        stats.count(PATH_ITEMS_LIST, "miss")
        got = self.filler.fill_or_wait(
            PATH_ITEMS_LIST, live_scope(group_id), [lkey],
            lambda: self._load_items_list(group_id),
            lambda pipe, temps, rows: _stage_items(pipe, temps[lkey], rows),
            poll, refresh=refresh)
        return got if isinstance(got, ItemsList) else items_list_of(got)

    def cached_page(
        self,
        user_id: int,
        group_id: int,
        limit: int,
        before: int | None,
        check_member: bool,
        before_fill: Callable[[], None] = lambda: None,
    ) -> CachedPage | None:
        """A feed page from Redis alone when warm, or None when the cache cannot answer it
        (Redis down, or a page past the cached list's end): the caller reads Postgres.

        Warm: one round trip, one script call per slot (``READ_PAGE`` in the group's slot:
        the page's ids, positions and rendered entities; ``VIEWED_STATE`` in the caller's:
        membership and the read state), two for a read state over ``RS_INLINE_BYTES``.
        Missing entities are one batched load;
        a missing read state or groups set is filled; a missing list takes
        ``_cold_page``, where ``before_fill()`` runs before the list is filled from
        Postgres (an admin's group check: an unknown group is never cached).
        """
        keys = self.cache.keys
        top = "+inf" if before is None else f"({before}"
        prefix = keys.key(group_tag(group_id), "item", "")
        groups, rs_key = groups_key(keys, user_id), key(keys, user_id, group_id)
        check = group_id if check_member else ""

        page_keys, page_args = [items_key(keys, group_id)], [prefix, top, limit]
        state_keys, state_args = [groups, rs_key], [check, RS_INLINE_BYTES]

        def read(r: Any) -> list[Any]:
            # Two slots: one script call each, in one packed batch on a single Redis. A
            # cluster pipeline asks a node for an EVAL's keys (COMMAND GETKEYS) before
            # sending it, a round trip per script: there, two direct calls (each routed by
            # its keys).
            if packed_client(r):
                return batch(r, [script_command(r, READ_PAGE, page_keys, page_args),
                                 script_command(r, VIEWED_STATE, state_keys, state_args)])
            return [READ_PAGE(keys=page_keys, args=page_args, client=r),
                    VIEWED_STATE(keys=state_keys, args=state_args, client=r)]

        try:
            got, reply = self.cache.run(PATH_PAGE, read)
            if got is None:  # the list is not cached: membership first, then its fill
                return self._cold_page(user_id, group_id, limit, before, check_member,
                                       before_fill)
            stats.count(PATH_ITEMS_LIST, "hit")
            if got[0] == 0:
                return None  # past the cached list: Postgres answers
            if check_member:
                cached_member = NO_VALUE if reply[0] == -1 else reply[0] == 1
                if not self._member(user_id, group_id, cached_member):
                    return CachedPage(False, [])
            ids_raw, positions_raw, fragments = got[1], got[2], got[3:]
            if not fragments:
                return CachedPage(True, [])
            positions = [int(p) for p in positions_raw.split(b",")]
            if len(reply) > 1 and reply[1] is not None:
                stats.count(PATH_PAGE, "hit")
                viewed = viewed_in(reply[1], positions)
            else:
                among = None if len(reply) == 1 else self.cache.run(
                    PATH_PAGE, lambda r: VIEWED_AMONG(keys=[groups, rs_key],
                                                      args=["", positions_raw], client=r))
                if among is not None and len(among) > 1:
                    stats.count(PATH_PAGE, "hit")
                    viewed = [c == _VIEWED_CHAR for c in among[1]]
                else:  # the read state is missing
                    state = self.fill_state(user_id, group_id, PATH_PAGE)
                    viewed = [state.viewed(p) for p in positions]
            if None not in fragments:
                stats.count(PATH_ITEMS, "hit")
                return CachedPage(True, list(zip(fragments, viewed, strict=True)))
            # Some entities missing (evicted, expired, never read): one batched fill; an
            # item gone meanwhile (deleted after the list was read) is left out.
            wanted = [Entity(int(i), live_scope(group_id), item_key(keys, group_id, int(i)))
                      for i in ids_raw.split(b",")]
            found = [{ENTITY_JSON: f} if f is not None else {} for f in fragments]
            rendered = self.entities.complete(wanted, found, self._load_items(group_id))
            return CachedPage(True, [(rendered[e.id][ENTITY_JSON], v) for e, v in
                                     zip(wanted, viewed, strict=True) if e.id in rendered])
        except CacheUnavailable:
            return None

    def _cold_page(
        self,
        user_id: int,
        group_id: int,
        limit: int,
        before: int | None,
        check_member: bool,
        before_fill: Callable[[], None],
    ) -> CachedPage | None:
        """``cached_page`` when the group's list is missing: the list and the caller's
        membership (checked first), the list's fill, then the page's entities and bits.
        Raises ``CacheUnavailable``."""
        keys = self.cache.keys
        lkey = items_key(keys, group_id)
        rs_key = key(keys, user_id, group_id)
        top = "+inf" if before is None else f"({before}"

        def read_list(r: Any) -> list[Any]:
            pipe = r.pipeline(transaction=False)  # two slots: plain single-key commands
            if check_member:
                queue_member_check(pipe, keys, user_id, group_id)
            pipe.zrevrangebyscore(lkey, top, "-inf", start=0, num=limit + 1, withscores=True)
            pipe.exists(lkey)
            return pipe.execute()

        reply = self._after_member(user_id, group_id, check_member,
                                   self.cache.run(PATH_ITEMS_LIST, read_list))
        if reply is None:
            return CachedPage(False, [])
        listed, exists = reply
        if exists:
            stats.count(PATH_ITEMS_LIST, "hit")
            entries = parse_items(listed).page(limit, before)
        else:
            before_fill()
            entries = self.fill_items_list(group_id).page(limit, before)
        if entries is None:
            return None  # past the cached list: Postgres answers
        wanted = [Entity(item_id, live_scope(group_id), item_key(keys, group_id, item_id))
                  for item_id, _ in entries]
        positions = [p for _, p in entries]

        def read_page(r: Any) -> list[Any]:
            pipe = r.pipeline(transaction=False)  # two slots
            queue_read(pipe, wanted)
            BITFIELD_IF_EXISTS(
                keys=[rs_key],
                args=["GET", "u32", 0, *(a for p in positions for a in ("GET", "u1",
                                                                        OFFSET + p))],
                client=pipe)
            return pipe.execute()

        reply = self.cache.run(PATH_PAGE, read_page) if wanted else [None]
        found, fields = reply[:-1], reply[-1]
        rendered = self.entities.complete(wanted, found, self._load_items(group_id))
        viewed = self._viewed(user_id, group_id, positions, fields) if wanted else []
        # An entity gone meanwhile (deleted after the list was read) is left out.
        return CachedPage(True, [(rendered[e.id][ENTITY_JSON], v) for e, v in
                                 zip(wanted, viewed, strict=True) if e.id in rendered])

    def _viewed(self, user_id: int, group_id: int, positions: Sequence[int],
                fields: Sequence[int] | None) -> list[bool]:
        """The page's has_viewed flags: from the read state's ``fields`` as read (a hit),
        or, when the state was missing (``None``), from the state filled now."""
        if fields is not None:
            stats.count(PATH_PAGE, "hit")
            return viewed_from_bits(positions, fields)
        state = self.fill_state(user_id, group_id, PATH_PAGE)
        return [state.viewed(p) for p in positions]

    # Read paths.

    def page(self, user_id: int, group_id: int, positions: Sequence[int], check_member: bool
             ) -> PageState:
        """Membership (unless ``check_member`` is False) and has_viewed for a page of items.

        On a hit: one round trip (a MULTI/EXEC of the user's slot: membership, existence
        of the read state and one BITFIELD_RO for the watermark and the page's bits).
        """
        keys = self.cache.keys
        rs_key = key(keys, user_id, group_id)

        def read(r: Any) -> list[Any]:
            pipe = r.pipeline(transaction=True)  # one slot: the user's
            if check_member:
                queue_member_check(pipe, keys, user_id, group_id)
            pipe.exists(rs_key)
            pipe.bitfield_ro(rs_key, "u32", 0, items=[("u1", OFFSET + p) for p in positions])
            return pipe.execute()

        try:
            reply = self._after_member(user_id, group_id, check_member,
                                       self.cache.run(PATH_PAGE, read))
            if reply is None:
                return PageState(False, [])
            exists, fields = reply
            return PageState(True, self._viewed(user_id, group_id, positions,
                                                fields if exists else None))
        except CacheUnavailable:
            stats.count(PATH_PAGE, "fallback")
            with self.db.read() as session:
                if check_member and not store.is_member(session, group_id, user_id):
                    return PageState(False, [])
                seen = store.viewed_among(session, user_id, group_id, positions)
            return PageState(True, [p in seen for p in positions])

    def group_unread(self, user_id: int, group_id: int, check_member: bool
                     ) -> tuple[bool, int]:
        """``(member, unread count)`` for one group; one round trip on a hit."""
        keys = self.cache.keys
        rs_key, lkey = key(keys, user_id, group_id), live_key(keys, group_id)

        def read(r: Any) -> list[Any]:
            pipe = r.pipeline(transaction=False)  # two slots: plain single-key commands
            if check_member:
                queue_member_check(pipe, keys, user_id, group_id)
            pipe.get(rs_key)
            pipe.get(lkey)
            return pipe.execute()

        try:
            reply = self._after_member(user_id, group_id, check_member,
                                       self.cache.run(PATH_UNREAD, read))
            if reply is None:
                return False, 0
            counts = self._counts(user_id, {group_id: (reply[0], reply[1])})
            return True, counts[group_id]
        except CacheUnavailable:
            stats.count(PATH_UNREAD, "fallback")
            with self.db.read() as session:
                if check_member and not store.is_member(session, group_id, user_id):
                    return False, 0
                return True, store.unread_counts(session, user_id, [group_id])[group_id]

    def all_unread(self, user_id: int) -> dict[int, int]:
        """Unread count per group over the user's groups. Warm: one round trip, the
        groups set read beside the read states and live bitmaps of the groups this process
        last saw the user in (``_GUESSED_GROUPS``); two when those were not the user's
        groups (the first answer from a process, or a membership change)."""
        keys = self.cache.keys
        known = _GUESSED_GROUPS.get((keys.prefix, user_id), _NO_GUESS)
        guess, guessed_keys = known

        def read(r: Any) -> tuple[Any, list[Any]]:
            members = ("SMEMBERS", groups_key(keys, user_id))
            if isinstance(r, redis.Redis):  # one MGET, whatever the slots: 2 replies
                mget = [("MGET", *guessed_keys)] if guessed_keys else []
                cached, *rest = pipelined(r, [members, *mget], raw=True)
                return cached, rest[0] if rest else []
            cached, *values = pipelined(r, [members, *(("GET", k) for k in guessed_keys)],
                                        raw=True)  # a cluster: one GET per key
            return cached, values

        try:
            cached, values = self.cache.run(PATH_UNREAD, read)
            groups = parse_groups(cached)
            if groups is NO_VALUE:
                groups = fill_groups(self.filler, user_id, self._load_groups(user_id))
            else:
                stats.count(GROUPS_PATH, "hit")
            ordered = tuple(sorted(groups))
            state_keys = _remember_groups(keys, user_id, ordered, known)
            if not ordered:
                return {}
            if ordered != guess:
                values = self.cache.run(PATH_UNREAD, lambda r: get_many(r, state_keys))
            raw = {g: (values[2 * i], values[2 * i + 1]) for i, g in enumerate(ordered)}
            return self._counts(user_id, raw)
        except CacheUnavailable:
            stats.count(PATH_UNREAD, "fallback")
            with self.db.read() as session:
                return store.unread_counts(
                    session, user_id, store.member_group_ids(session, user_id)
                )

    def counts_from_raw(self, user_id: int, raw: dict[int, tuple[bytes | None, bytes | None]]
                        ) -> dict[int, int]:
        """Unread counts from (rs, live) strings fetched by the caller (live events read
        them in the pipeline that applies a change), filling the missing ones."""
        return self._counts(user_id, raw)

    def _counts(self, user_id: int, raw: dict[int, tuple[bytes | None, bytes | None]]
                ) -> dict[int, int]:
        """Unread counts from fetched (rs, live) strings, filling the missing ones."""
        counts: dict[int, int] = {}
        state_hits = live_hits = 0
        for group_id, (rs_raw, live_raw) in raw.items():
            if rs_raw is None:
                state = self.fill_state(user_id, group_id)
            else:
                state_hits += 1
                state = ReadState.from_raw(rs_raw)
            if live_raw is None:
                live = self.fill_live(group_id)
            else:
                live_hits += 1
                live = live_raw
            counts[group_id] = unread(live, state)
        stats.count(PATH_UNREAD, "hit", state_hits)
        stats.count(PATH_LIVE, "hit", live_hits)
        return counts


# --- the operator's check / rebuild / warm (see cache/checks.py) ----------------------------

OPS_PATH = "group_feed"


def _bits(raw: bytes) -> set[int]:
    return {i * 8 + b for i, byte in enumerate(raw) for b in range(8) if byte & (0x80 >> b)}


def _check(deps: checks.Deps, pairs: Sequence[tuple[int, int]], users: Sequence[int],
           live_groups: Sequence[int], **who: Any) -> list[checks.Difference]:
    keys = deps.cache.keys
    scopes: list[Scope] = []
    reads: list[tuple[str, str]] = []
    for uid in users:
        scopes.append(groups_scope(uid))
        reads += [("get", keys.version(scopes[-1])), ("smembers", groups_key(keys, uid))]
    for uid, gid in pairs:
        scopes.append(scope(uid, gid))
        reads += [("get", keys.version(scopes[-1])), ("get", key(keys, uid, gid))]
    for gid in live_groups:
        scopes.append(live_scope(gid))
        reads += [("get", keys.version(scopes[-1])), ("get", live_key(keys, gid))]
    for gid in live_groups:  # the newest-items lists (same scope as the live bitmaps)
        reads.append(("zrange", items_key(keys, gid)))
    cached = checks.peek(deps.cache, reads)
    before = checks.versions(deps, scopes)
    with deps.db.read() as session:
        groups = {uid: sorted(store.member_group_ids(session, uid)) for uid in users}
        viewed = {p: set(store.viewed_positions(session, *p)) for p in pairs}
        live = {gid: set(store.live_positions(session, gid))
                for gid in {g for _, g in pairs} | set(live_groups)}
        newest = {gid: store.newest_item_positions(session, gid, ITEMS_LIST_SIZE)
                  for gid in live_groups}
    after = checks.versions(deps, scopes)
    out: list[checks.Difference] = []
    i = 0
    for uid in users:
        copy, (exists, raw) = checks.version_copy(cached[i]), cached[i + 1]
        got = parse_groups(raw)
        if exists and checks.settled(copy, before, after, scopes[i // 2]):
            out += checks.differs(OPS_PATH, groups_key(keys, uid),
                                  "no sentinel" if got is NO_VALUE else sorted(got),
                                  groups[uid], **who)
        i += 2
    for uid, gid in pairs:
        copy, (exists, raw) = checks.version_copy(cached[i]), cached[i + 1]
        if exists and checks.settled(copy, before, after, scopes[i // 2]):
            rs = ReadState.from_raw(raw)
            out += checks.differs(OPS_PATH, key(keys, uid, gid),
                                  sorted(p for p in live[gid] if rs.viewed(p)),
                                  sorted(live[gid] & viewed[(uid, gid)]), **who)
        i += 2
    for gid in live_groups:
        copy, (exists, raw) = checks.version_copy(cached[i]), cached[i + 1]
        if exists and checks.settled(copy, before, after, scopes[i // 2]):
            out += checks.differs(OPS_PATH, live_key(keys, gid), sorted(_bits(raw)),
                                  sorted(live[gid]), **who)
        i += 2
    for n, gid in enumerate(live_groups):
        copy = checks.version_copy(cached[len(users) * 2 + len(pairs) * 2 + 2 * n])
        exists, raw = cached[i]
        if exists and checks.settled(copy, before, after, live_scope(gid)):
            # The list is the newest live items, all of them when it has the sentinel.
            got = parse_items(list(reversed(raw)))
            size = len(newest[gid]) if got.complete else len(got.entries)
            out += checks.differs(OPS_PATH, items_key(keys, gid),
                                  (got.entries, got.complete),
                                  (newest[gid][:size], len(newest[gid]) < ITEMS_LIST_SIZE
                                   if got.complete else False), **who)
        i += 1
    return out


def _member_groups(deps: checks.Deps, user_id: int) -> list[int]:
    return sorted(checks.sql(deps, store.member_group_ids, user_id))


def check(deps: checks.Deps, user_id: int) -> list[checks.Difference]:
    """The user's groups set, read state in each group and each group's live bitmap."""
    groups = _member_groups(deps, user_id)
    return _check(deps, [(user_id, g) for g in groups], [user_id], groups, user_id=user_id)


def check_group(deps: checks.Deps, group_id: int) -> list[checks.Difference]:
    """A group's live bitmap and every member's read state in it."""
    members = checks.sql(deps, rebuild_store.group_member_ids, group_id)
    return _check(deps, [(u, group_id) for u in members], [], [group_id], group_id=group_id)


def _states(deps: checks.Deps) -> ReadStates:
    return ReadStates(deps.cache, deps.filler, deps.db)


def rebuild(deps: checks.Deps, user_id: int) -> None:
    fill_groups(deps.filler, user_id,
                lambda: checks.sql(deps, store.member_group_ids, user_id), refresh=True)
    states = _states(deps)
    for gid in _member_groups(deps, user_id):
        states.fill_state(user_id, gid, refresh=True)
        states.fill_live(gid, refresh=True)


def rebuild_group(deps: checks.Deps, group_id: int) -> None:
    states = _states(deps)
    states.fill_live(group_id, refresh=True)
    for uid in checks.sql(deps, rebuild_store.group_member_ids, group_id):
        states.fill_state(uid, group_id, refresh=True)


def warm(deps: checks.Deps, user_id: int) -> None:
    states = _states(deps)
    states.all_unread(user_id)  # groups set, read states, live bitmaps
    for gid in _member_groups(deps, user_id):  # each group's list and its entities
        states.cached_page(user_id, gid, ITEMS_LIST_SIZE, None, check_member=False)
