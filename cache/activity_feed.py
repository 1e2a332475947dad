"""The user activity feed in Redis: counters, the newest items and page 1, in one key.

Per user, under the hash tag ``{u:<id>}`` and one version scope ``(u:<id>, activity)``,
one STRING ``act:feed`` of up to four lines (``\\n``; orjson never writes one):

1. the counters ``[total, unread, {type: n}]`` (types with ``n > 0``);
2. the newest ``min(L, RECENT_COUNT)`` items (the summary's list);
3. the rest of the newest ``L`` items (``L <= PAGE_CAP``), ``[]`` when there is none;
4. only when some unread item is older than those ``L``: the newest ``PAGE_CAP`` unread
   items (else page 1 of the unread listing is the unread items of lines 2-3).

An item is a JSON array in ``PACKED`` order, the nullable fields last and trailing nulls
dropped (``pack_item``): the field names are not stored once per item.

A fill (one indexed query per list, in one snapshot) writes ``L = min(total, PAGE_CAP)``.
A write locks the user's scope (``uow.change``), changes rows, then ``record_write`` SETs
the counters and the newest ``RECENT_COUNT`` items recomputed from Postgres under that
lock (absolute values: idempotent), so the summary stays a hit and a page that needs
more than those items is a miss the next read refills. A read knows from the counters
whether the key holds its answer (``holds_page``): ``L`` items answer any page of size
``<= L`` and every page when ``L == total``. The key expires after the idle TTL; its size is
at most ``2 * PAGE_CAP`` items.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from cache import checks
from cache.client import NO_VALUE, Cache, pipelined
from cache.fill import Filler, read_through
from cache.keys import Keyspace, Scope, user_tag
from cache.versioned import Change
from storage import activity_feed as store
from storage.db import Database

PAGE_CAP = 100  # = the API's largest page_size
RECENT_COUNT = 5
SUMMARY_PATH = "activity_summary"
PAGE_PATH = "activity_page"

# An item's fields as packed: never-null first, so trailing nulls can be dropped.
PACKED = ("id", "activity_type", "title", "is_read", "created_at", "read_at", "description",
          "data", "target_type", "target_id")
_IS_READ = PACKED.index("is_read")
_NULLS = (None,) * len(PACKED)


def scope(user_id: int) -> Scope:
    return Scope(user_tag(user_id), "activity")


def feed_key(keys: Keyspace, user_id: int) -> str:
    return keys.key(user_tag(user_id), "act", "feed")


def all_keys(keys: Keyspace, user_id: int) -> list[str]:
    return [feed_key(keys, user_id)]


# --- the value's format ------------------------------------------------------------------


def pack_item(item: dict[str, Any]) -> list[Any]:
    """``store.item_dict`` -> its ``PACKED`` values without trailing nulls."""
    row = [item[name] for name in PACKED]
    while row[-1] is None:
        row.pop()
    return row


def unpack_item(row: list[Any]) -> dict[str, Any]:
    """``pack_item``'s inverse, in ``store.item_dict``'s field order."""
    if len(row) < len(PACKED):
        row = [*row, *_NULLS[len(row):]]
    (id_, activity_type, title, is_read, created_at, read_at, description, data,
     target_type, target_id) = row
    return {"id": id_, "activity_type": activity_type, "title": title,
            "description": description, "is_read": is_read, "read_at": read_at,
            "created_at": created_at, "data": data, "target_type": target_type,
            "target_id": target_id}


def encode(counts: store.FeedCounts, items: list[dict[str, Any]],
           unread: list[dict[str, Any]] | None = None) -> bytes:
    """The key's value: the counters, ``items`` (the newest, newest first) and, if given,
    the newest unread items."""
    by_type = {t: n for t, n in counts.by_type.items() if n}
    lines = [orjson.dumps([counts.total, counts.unread, by_type]),
             orjson.dumps([pack_item(i) for i in items[:RECENT_COUNT]]),
             orjson.dumps([pack_item(i) for i in items[RECENT_COUNT:]])]
    if unread is not None:
        lines.append(orjson.dumps([pack_item(i) for i in unread]))
    return b"\n".join(lines)


def _counts(line: bytes) -> store.FeedCounts:
    total, unread, by_type = orjson.loads(line)
    return store.FeedCounts(total, unread, by_type)


@dataclass
class Cached:
    """A decoded value: ``items`` the newest ``L`` (packed), ``unread`` line 4 or None."""

    counts: store.FeedCounts
    items: list[list[Any]]
    unread: list[list[Any]] | None

    @classmethod
    def decode(cls, raw: bytes) -> Cached:
        head, recent, rest, *unread = raw.split(b"\n", 3)
        return cls(_counts(head), orjson.loads(recent) + orjson.loads(rest),
                   orjson.loads(unread[0]) if unread else None)

    def page(self, unread_only: bool, size: int) -> list[list[Any]] | None:
        """Page 1 of ``size`` items of the listing, or None if the value does not hold it."""
        if not unread_only:
            items, whole = self.items, self.counts.total
        elif self.unread is not None:
            return self.unread[:size]
        else:
            items = [row for row in self.items if not row[_IS_READ]]
            whole = self.counts.unread
        if len(items) >= size or len(items) == whole:
            return items[:size]
        return None


def total_of(raw: bytes | None) -> int | None:
    """The total from the first bytes of a value (``queue_total``), None if it is missing."""
    if not raw:
        return None
    return int(raw[1:raw.index(b",")])


def queue_total(pipe: Any, keys: Keyspace, user_id: int) -> None:
    """Queue the read of the user's cached total (for ``total_of``): the value's head only."""
    pipe.getrange(feed_key(keys, user_id), 0, 23)


# --- writes --------------------------------------------------------------------------------


def record_write(
    change: Change,
    keys: Keyspace,
    user_id: int,
    counts: store.FeedCounts,
    recent: list[dict[str, Any]],
) -> None:
    """The op of one user's committed write: the counters and the newest ``RECENT_COUNT``
    items as absolute values (the older items and the unread line leave the value).

    ``counts``/``recent`` must be computed after ``uow.change`` took the scope's lock.
    """
    # KEEPTTL: a plain SET would make the key persistent (no idle TTL any more).
    change.op("SET", feed_key(keys, user_id), encode(counts, recent[:RECENT_COUNT]).decode(),
              "KEEPTTL")


def written(change: Change, keys: Keyspace, user_id: int
            ) -> tuple[store.FeedCounts, list[dict[str, Any]]] | None:
    """``(counts, newest items)`` a ``record_write`` change sets, None if it sets none."""
    key = feed_key(keys, user_id)
    for op in change.ops:
        if op[0] == "SET" and change.keys[op[1]] == key:
            value = op[2].encode() if isinstance(op[2], str) else op[2]
            cached = Cached.decode(value)
            return cached.counts, [unpack_item(row) for row in cached.items]
    return None


# --- fills ---------------------------------------------------------------------------------


@dataclass
class Snapshot:
    """What the key holds for one user, loaded from Postgres in one transaction:
    ``page_unread`` is None when ``page_all`` holds every unread item."""

    counts: store.FeedCounts
    page_all: list[dict[str, Any]]
    page_unread: list[dict[str, Any]] | None

    @property
    def recent(self) -> list[dict[str, Any]]:
        return self.page_all[:RECENT_COUNT]

    def unread_page(self) -> list[dict[str, Any]]:
        if self.page_unread is not None:
            return self.page_unread
        return [item for item in self.page_all if not item["is_read"]]


def load_snapshot(db: Database, user_id: int) -> Snapshot:
    with db.read() as session, session.begin():
        session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
        counts = store.counts_for_users(session, [user_id])[user_id]
        page_all = store.recent_for_users(session, [user_id], PAGE_CAP)[user_id]
        unread = None
        held = sum(1 for item in page_all if not item["is_read"])
        if len(page_all) < counts.total and held < counts.unread:
            unread = store.recent_for_users(session, [user_id], PAGE_CAP, unread_only=True)
            unread = unread[user_id]
    return Snapshot(counts, page_all, unread)


def _fill(cache: Cache, filler: Filler, db: Database, user_id: int, path: str) -> Snapshot:
    keys = all_keys(cache.keys, user_id)

    def stage(pipe: Any, temps: dict[str, str], snap: Snapshot) -> None:
        pipe.set(temps[keys[0]], encode(snap.counts, snap.page_all, snap.page_unread))

    return filler.fill(path, scope(user_id), keys, lambda: load_snapshot(db, user_id), stage)


def refill(cache: Cache, filler: Filler, db: Database, user_id: int, path: str) -> Snapshot:
    """Rebuild the user's key from Postgres, version-checked (operators' rebuild)."""
    return _fill(cache, filler, db, user_id, path)


# --- reads ---------------------------------------------------------------------------------


@dataclass
class Summary:
    counts: store.FeedCounts
    recent: list[dict[str, Any]]


def _get(r: Any, key: str) -> bytes | None:
    return pipelined(r, (("GET", key),), raw=True)[0]


def summary(cache: Cache, filler: Filler, db: Database, user_id: int) -> Summary:
    """Counts and the newest items: one GET on a hit (lines 1-2 parsed)."""
    key = feed_key(cache.keys, user_id)

    def read(r: Any) -> Summary | Any:
        raw = _get(r, key)
        if raw is None:
            return NO_VALUE
        head, recent, _ = raw.split(b"\n", 2)
        return Summary(_counts(head), [unpack_item(row) for row in orjson.loads(recent)])

    def fill() -> Summary:
        snap = _fill(cache, filler, db, user_id, SUMMARY_PATH)
        return Summary(snap.counts, snap.recent)

    def fallback() -> Summary:
        with db.read() as session:
            counts = store.counts_for_users(session, [user_id])[user_id]
            recent = store.recent_for_users(session, [user_id], RECENT_COUNT)[user_id]
        return Summary(counts, recent)

    return read_through(cache, SUMMARY_PATH, read, fill, fallback)


def first_page(
    cache: Cache, filler: Filler, db: Database, user_id: int, unread_only: bool, size: int
) -> tuple[int, list[dict[str, Any]]]:
    """``(count, items)`` of page 1 of the unfiltered or unread-only listing
    (``size <= PAGE_CAP``): one GET on a hit; a value that does not hold the page is
    refilled."""
    if size > PAGE_CAP:
        raise ValueError("page size above the cached cap")
    key = feed_key(cache.keys, user_id)

    def count(counts: store.FeedCounts) -> int:
        return counts.unread if unread_only else counts.total

    def read(r: Any) -> Any:
        raw = _get(r, key)
        if raw is None:
            return NO_VALUE
        cached = Cached.decode(raw)
        rows = cached.page(unread_only, size)
        if rows is None:
            return NO_VALUE
        return count(cached.counts), [unpack_item(row) for row in rows]

    def fill() -> tuple[int, list[dict[str, Any]]]:
        snap = _fill(cache, filler, db, user_id, PAGE_PATH)
        return count(snap.counts), (snap.unread_page() if unread_only else snap.page_all)[:size]

    def fallback() -> tuple[int, list[dict[str, Any]]]:
        query = store.PageQuery(user_id, is_read=False if unread_only else None)
        with db.read() as session:
            return store.page(session, query, 0, size)

    return read_through(cache, PAGE_PATH, read, fill, fallback)


# --- the operator's check / rebuild / warm (see cache/checks.py) ----------------------------

OPS_PATH = "activity_feed"


def _json(value: Any) -> Any:
    return orjson.loads(orjson.dumps(value))


def check(deps: checks.Deps, user_id: int) -> list[checks.Difference]:
    """The cached counters, newest items and unread line against Postgres."""
    keys = deps.cache.keys
    user_scope = scope(user_id)
    key = feed_key(keys, user_id)
    cached = checks.peek(deps.cache, [("get", keys.version(user_scope)), ("get", key)])
    before = checks.versions(deps, [user_scope])
    snap = load_snapshot(deps.db, user_id)
    after = checks.versions(deps, [user_scope])
    if not checks.settled(checks.version_copy(cached[0]), before, after, user_scope):
        return []
    exists, raw = cached[1]
    if not exists:
        return []
    value = Cached.decode(raw)
    items = [unpack_item(row) for row in value.items]
    parts = [("counts", value.counts, snap.counts),
             ("items", items, _json(snap.page_all[:max(len(items), RECENT_COUNT)]))]
    if value.unread is not None:
        parts.append(("unread", [unpack_item(r) for r in value.unread],
                      _json(snap.unread_page())))
    out: list[checks.Difference] = []
    for part, mine, truth in parts:  # one difference per part that differs
        out += checks.differs(OPS_PATH, key, {part: mine}, {part: truth}, user_id=user_id)
    return out


def rebuild(deps: checks.Deps, user_id: int) -> None:
    refill(deps.cache, deps.filler, deps.db, user_id, checks.PATH)


def warm(deps: checks.Deps, user_id: int) -> None:
    summary(deps.cache, deps.filler, deps.db, user_id)  # fills the key
