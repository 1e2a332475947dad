"""The user activity feed in Redis: counters, recent items and the first listing pages.

Per user, under the hash tag ``{u:<id>}`` and one version scope ``(u:<id>, activity)``:

- ``act:counts``  HASH  ``total``, ``unread`` and ``t:<type>`` for every activity type
  (always all fields, so an empty feed is a hit; small ints: listpack-encoded);
- ``act:recent``  STRING  JSON of the newest ``RECENT_COUNT`` items (the summary's list);
- ``act:page:all`` / ``act:page:unread``  STRING  JSON of the newest ``PAGE_CAP`` items,
  all or unread only: page 1 of the unfiltered and the unread-only listing for any
  ``page_size`` up to ``PAGE_CAP``.

A write locks the user's scope (``uow.change``), changes rows, then ``record_write`` sets
the counters and the recent list to absolute values recomputed from Postgres under that
lock (HSET / SET: idempotent) and drops the two pages (DEL), which the next read
rebuilds with one indexed query. Every key expires after the idle TTL. Per user this is
at most ``2 * PAGE_CAP + RECENT_COUNT`` items.
"""

from __future__ import annotations

from collections.abc import Sequence
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


def scope(user_id: int) -> Scope:
    return Scope(user_tag(user_id), "activity")


def counts_key(keys: Keyspace, user_id: int) -> str:
    return keys.key(user_tag(user_id), "act", "counts")


def recent_key(keys: Keyspace, user_id: int) -> str:
    return keys.key(user_tag(user_id), "act", "recent")


def page_key(keys: Keyspace, user_id: int, unread_only: bool) -> str:
    return keys.key(user_tag(user_id), "act", "page", "unread" if unread_only else "all")


def all_keys(keys: Keyspace, user_id: int) -> list[str]:
    return [
        counts_key(keys, user_id),
        recent_key(keys, user_id),
        page_key(keys, user_id, False),
        page_key(keys, user_id, True),
    ]


def encode_counts(counts: store.FeedCounts) -> dict[str, int]:
    fields = {"total": counts.total, "unread": counts.unread}
    for activity_type in store.ACTIVITY_TYPES:
        fields[f"t:{activity_type}"] = counts.by_type.get(activity_type, 0)
    return fields


_TYPE_FIELDS = tuple((f"t:{t}".encode(), t) for t in store.ACTIVITY_TYPES)


def decode_counts(raw: dict[Any, Any]) -> store.FeedCounts | Any:
    """Counts from an HGETALL reply, or NO_VALUE if the hash is missing or partial."""
    if raw and isinstance(next(iter(raw)), str):  # a client that decodes replies
        raw = {(k.encode() if isinstance(k, str) else k): v for k, v in raw.items()}
    total, unread = raw.get(b"total"), raw.get(b"unread")
    if total is None or unread is None:
        return NO_VALUE
    by_type = {}
    for field, activity_type in _TYPE_FIELDS:
        value = raw.get(field)
        if value is not None and int(value):
            by_type[activity_type] = int(value)
    return store.FeedCounts(int(total), int(unread), by_type)


def record_write(
    change: Change,
    keys: Keyspace,
    user_id: int,
    counts: store.FeedCounts,
    recent: list[dict[str, Any]],
) -> None:
    """Ops of one user's committed write: absolute counters and recent list, pages dropped.

    ``counts``/``recent`` must be computed after ``uow.change`` took the scope's lock.
    """
    flat: list[Any] = []
    for name, value in encode_counts(counts).items():
        flat += [name, value]
    change.op("HSET", counts_key(keys, user_id), *flat)
    # KEEPTTL: a plain SET would make the key persistent (no idle TTL any more).
    change.op("SET", recent_key(keys, user_id), orjson.dumps(recent).decode(), "KEEPTTL")
    change.op("DEL", page_key(keys, user_id, False))
    change.op("DEL", page_key(keys, user_id, True))


@dataclass
class Snapshot:
    """Everything the cache holds for one user, loaded from Postgres in one transaction."""

    counts: store.FeedCounts
    page_all: list[dict[str, Any]]
    page_unread: list[dict[str, Any]]

    @property
    def recent(self) -> list[dict[str, Any]]:
        return self.page_all[:RECENT_COUNT]


def load_snapshot(db: Database, user_id: int) -> Snapshot:
    with db.session() as session, session.begin():
        session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
        counts = store.counts_for_users(session, [user_id])[user_id]
        page_all = store.recent_for_users(session, [user_id], PAGE_CAP)[user_id]
        unread = store.recent_for_users(session, [user_id], PAGE_CAP, unread_only=True)
    return Snapshot(counts, page_all, unread[user_id])


def _fill(cache: Cache, filler: Filler, db: Database, user_id: int, path: str) -> Snapshot:
    keys = all_keys(cache.keys, user_id)

    def stage(pipe: Any, temps: dict[str, str], snap: Snapshot) -> None:
        pipe.hset(temps[keys[0]], mapping=encode_counts(snap.counts))
        pipe.set(temps[keys[1]], orjson.dumps(snap.recent))
        pipe.set(temps[keys[2]], orjson.dumps(snap.page_all))
        pipe.set(temps[keys[3]], orjson.dumps(snap.page_unread))

    return filler.fill(path, scope(user_id), keys, lambda: load_snapshot(db, user_id), stage)


def refill(cache: Cache, filler: Filler, db: Database, user_id: int, path: str) -> Snapshot:
    """Rebuild every key of the user from Postgres, version-checked (operators' rebuild)."""
    return _fill(cache, filler, db, user_id, path)


@dataclass
class Summary:
    counts: store.FeedCounts
    recent: list[dict[str, Any]]


def summary(cache: Cache, filler: Filler, db: Database, user_id: int) -> Summary:
    """Counts and the newest items: one pipelined round trip on a hit."""
    ckey, rkey = counts_key(cache.keys, user_id), recent_key(cache.keys, user_id)

    def read(r: Any) -> Summary | Any:
        raw_counts, raw_recent = pipelined(r, (("HGETALL", ckey), ("GET", rkey)))
        counts = decode_counts(raw_counts)
        if counts is NO_VALUE or raw_recent is None:
            return NO_VALUE
        return Summary(counts, orjson.loads(raw_recent))

    def fill() -> Summary:
        snap = _fill(cache, filler, db, user_id, SUMMARY_PATH)
        return Summary(snap.counts, snap.recent)

    def fallback() -> Summary:
        with db.session() as session:
            counts = store.counts_for_users(session, [user_id])[user_id]
            recent = store.recent_for_users(session, [user_id], RECENT_COUNT)[user_id]
        return Summary(counts, recent)

    return read_through(cache, SUMMARY_PATH, read, fill, fallback)


def first_page(
    cache: Cache, filler: Filler, db: Database, user_id: int, unread_only: bool, size: int
) -> tuple[int, list[dict[str, Any]]]:
    """``(count, items)`` of page 1 of the unfiltered or unread-only listing
    (``size <= PAGE_CAP``): one pipelined round trip on a hit."""
    if size > PAGE_CAP:
        raise ValueError("page size above the cached cap")
    ckey, pkey = counts_key(cache.keys, user_id), page_key(cache.keys, user_id, unread_only)

    def pick(counts: store.FeedCounts, items: Sequence[dict[str, Any]]):
        return (counts.unread if unread_only else counts.total), list(items[:size])

    def read(r: Any) -> Any:
        raw_counts, raw_page = pipelined(r, (("HGETALL", ckey), ("GET", pkey)))
        counts = decode_counts(raw_counts)
        if counts is NO_VALUE or raw_page is None:
            return NO_VALUE
        return pick(counts, orjson.loads(raw_page))

    def fill() -> tuple[int, list[dict[str, Any]]]:
        snap = _fill(cache, filler, db, user_id, PAGE_PATH)
        return pick(snap.counts, snap.page_unread if unread_only else snap.page_all)

    def fallback() -> tuple[int, list[dict[str, Any]]]:
        query = store.PageQuery(user_id, is_read=False if unread_only else None)
        with db.session() as session:
            return store.page(session, query, 0, size)

    return read_through(cache, PAGE_PATH, read, fill, fallback)


# --- the operator's check / rebuild / warm (see cache/checks.py) ----------------------------

OPS_PATH = "activity_feed"


def _json(value: Any) -> Any:
    return orjson.loads(orjson.dumps(value))


def check(deps: checks.Deps, user_id: int) -> list[checks.Difference]:
    """The counters, recent list and first pages against Postgres."""
    keys = deps.cache.keys
    user_scope = scope(user_id)
    names = all_keys(keys, user_id)
    cached = checks.peek(deps.cache, [("get", keys.version(user_scope)), ("hgetall", names[0]),
                                      *[("get", k) for k in names[1:]]])
    before = checks.versions(deps, [user_scope])
    snap = load_snapshot(deps.db, user_id)
    after = checks.versions(deps, [user_scope])
    if not checks.settled(checks.version_copy(cached[0]), before, after, user_scope):
        return []
    out: list[checks.Difference] = []
    exists, raw = cached[1]
    if exists:
        out += checks.differs(OPS_PATH, names[0], decode_counts(raw), snap.counts,
                              user_id=user_id)
    truths = [snap.recent, snap.page_all, snap.page_unread]
    for name, (exists, raw), truth in zip(names[1:], cached[2:], truths, strict=True):
        if exists:
            out += checks.differs(OPS_PATH, name, orjson.loads(raw), _json(truth),
                                  user_id=user_id)
    return out


def rebuild(deps: checks.Deps, user_id: int) -> None:
    refill(deps.cache, deps.filler, deps.db, user_id, checks.PATH)


def warm(deps: checks.Deps, user_id: int) -> None:
    summary(deps.cache, deps.filler, deps.db, user_id)  # fills every key
