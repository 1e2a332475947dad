"""The read paths as operators see them: for each, who has data, how to compare what Redis
holds with Postgres, how to rebuild it and how to warm it.

=========  ===================================================================================
path       per-user state (slice module)
=========  ===================================================================================
views      groups set, read state per group, and the live bitmap of each of the user's
           groups (``cache/memberships.py``, ``cache/read_state.py``)
activity   counters, recent list, first pages (``cache/activity_feed.py``)
feeds      community followees, collectives and own author set (``cache/community_feed.py``);
           personalized inputs and ranking (``cache/ranked_feed.py``)
reels      recently viewed list (``cache/recent_reels.py``)
=========  ===================================================================================

``check(state, user)`` is read-only and returns the differences between what Redis holds
and what Postgres says; nothing cached is no difference. A key is compared only when its
version is settled: the Redis copy (read first) equals the Postgres row read before *and*
after loading the truth (so no write committed meanwhile and none is waiting for its
apply). A difference is therefore a real one, never a write in flight, and a healthy
system reports none, even under traffic.

``rebuild(state, user)`` refills every key of the path through the slice's own
version-checked fill (a fill computed under an outdated version is dropped), whether or
not it is cached. ``warm(state, user)`` runs the slice's read-through reads, so a miss is
filled and the user's next read is a hit. The personalized ranking is a page cache of a
time-dependent score (5 minutes) that others' activity moves between refreshes by design,
so its check covers the cached inputs and the ranking's own shape, not its order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import orjson
from flask import Flask, current_app, has_app_context

from cache import activity_feed, memberships, read_state, recent_reels
from cache import community_feed as cf
from cache.client import NO_VALUE
from cache.keys import Scope
from cache.read_state import ReadState, ReadStates
from cache.rebuild import peek, version_copy
from service import ranked_feed_ops
from service.bootstrap import AppState
from storage import group_feed as gf_store
from storage import posts as posts_store
from storage import rebuild as store
from storage import reels as reels_store

REBUILD_PATH = "rebuild"
MAX_DETAIL = 200


@dataclass(frozen=True)
class Difference:
    """One cached key that does not say what Postgres says."""

    path: str
    key: str
    detail: str
    user_id: int | None = None
    group_id: int | None = None

    def __str__(self) -> str:
        who = f"user {self.user_id}" if self.user_id is not None else f"group {self.group_id}"
        return f"{self.path} {who} {self.key}: {self.detail}"


@dataclass(frozen=True)
class ReadPath:
    name: str
    check: Callable[[AppState, int], list[Difference]]
    rebuild: Callable[[AppState, int], None]
    warm: Callable[[AppState, int], None]
    check_group: Callable[[AppState, int], list[Difference]] | None = None
    rebuild_group: Callable[[AppState, int], None] | None = None

    def users(self, state: AppState, after: int = 0, batch: int = 500) -> Iterator[int]:
        """Every user id with data for this path above ``after``, ascending, streamed."""
        while True:
            with state.db.session() as session:
                ids = store.user_ids(session, self.name, after, batch)
            yield from ids
            if len(ids) < batch:
                return
            after = ids[-1]


# --- shared helpers --------------------------------------------------------------------------


def _sql(state: AppState, fn: Callable[..., Any], *args: Any) -> Any:
    with state.db.session() as session:
        return fn(session, *args)


def _versions(state: AppState, scopes: Sequence[Scope]) -> dict[str, int]:
    return _sql(state, store.versions, [s.row_name for s in scopes])


def _settled(copy: int | None, before: dict[str, int], after: dict[str, int],
             scope: Scope) -> bool:
    """No write moved the scope while we loaded, and none waits for its apply."""
    row = scope.row_name
    return before[row] == after[row] and (copy is None or copy == before[row])


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= MAX_DETAIL else text[:MAX_DETAIL] + "..."


def _differs(path: str, key: str, cached: Any, truth: Any, **who: Any) -> list[Difference]:
    if cached == truth:
        return []
    return [Difference(path, key, f"cached {_short(cached)} != Postgres {_short(truth)}",
                       **who)]


def app_context(state: AppState) -> AbstractContextManager[Any]:
    """An app context whose ``state()`` is ``state`` (service code a job reuses needs it)."""
    if has_app_context() and current_app.extensions.get("hc") is state:
        return nullcontext()
    app = Flask("jobs")
    app.extensions["hc"] = state
    return app.app_context()


def _bits(raw: bytes) -> set[int]:
    return {i * 8 + b for i, byte in enumerate(raw) for b in range(8) if byte & (0x80 >> b)}


# --- views: group feed read state --------------------------------------------------------------


def _check_views(state: AppState, pairs: Sequence[tuple[int, int]], users: Sequence[int],
                 live_groups: Sequence[int], **who: Any) -> list[Difference]:
    keys = state.cache.keys
    scopes: list[Scope] = []
    reads: list[tuple[str, str]] = []
    for uid in users:
        scopes.append(memberships.scope(uid))
        reads += [("get", keys.version(scopes[-1])), ("smembers", memberships.key(keys, uid))]
    for uid, gid in pairs:
        scopes.append(read_state.scope(uid, gid))
        reads += [("get", keys.version(scopes[-1])), ("get", read_state.key(keys, uid, gid))]
    for gid in live_groups:
        scopes.append(read_state.live_scope(gid))
        reads += [("get", keys.version(scopes[-1])), ("get", read_state.live_key(keys, gid))]
    cached = peek(state.cache, reads)
    before = _versions(state, scopes)
    with state.db.session() as session:
        groups = {uid: sorted(gf_store.member_group_ids(session, uid)) for uid in users}
        viewed = {p: set(gf_store.viewed_positions(session, *p)) for p in pairs}
        live = {gid: set(gf_store.live_positions(session, gid))
                for gid in {g for _, g in pairs} | set(live_groups)}
    after = _versions(state, scopes)
    out: list[Difference] = []
    i = 0
    for uid in users:
        copy, (exists, raw) = version_copy(cached[i]), cached[i + 1]
        got = memberships.parse_groups(raw)
        if exists and _settled(copy, before, after, scopes[i // 2]):
            out += _differs("views", memberships.key(keys, uid),
                            "no sentinel" if got is NO_VALUE else sorted(got), groups[uid],
                            **who)
        i += 2
    for uid, gid in pairs:
        copy, (exists, raw) = version_copy(cached[i]), cached[i + 1]
        if exists and _settled(copy, before, after, scopes[i // 2]):
            rs = ReadState.from_raw(raw)
            out += _differs("views", read_state.key(keys, uid, gid),
                            sorted(p for p in live[gid] if rs.viewed(p)),
                            sorted(live[gid] & viewed[(uid, gid)]), **who)
        i += 2
    for gid in live_groups:
        copy, (exists, raw) = version_copy(cached[i]), cached[i + 1]
        if exists and _settled(copy, before, after, scopes[i // 2]):
            out += _differs("views", read_state.live_key(keys, gid), sorted(_bits(raw)),
                            sorted(live[gid]), **who)
        i += 2
    return out


def _member_groups(state: AppState, user_id: int) -> list[int]:
    return sorted(_sql(state, gf_store.member_group_ids, user_id))


def check_views(state: AppState, user_id: int) -> list[Difference]:
    groups = _member_groups(state, user_id)
    return _check_views(state, [(user_id, g) for g in groups], [user_id], groups,
                        user_id=user_id)


def check_views_group(state: AppState, group_id: int) -> list[Difference]:
    members = _sql(state, store.group_member_ids, group_id)
    return _check_views(state, [(u, group_id) for u in members], [], [group_id],
                        group_id=group_id)


def _read_states(state: AppState) -> ReadStates:
    return ReadStates(state.cache, state.filler, state.db)


def rebuild_views(state: AppState, user_id: int) -> None:
    memberships.fill(state.filler, user_id,
                     lambda: _sql(state, gf_store.member_group_ids, user_id), refresh=True)
    states = _read_states(state)
    for gid in _member_groups(state, user_id):
        states.fill_state(user_id, gid, refresh=True)
        states.fill_live(gid, refresh=True)


def rebuild_views_group(state: AppState, group_id: int) -> None:
    states = _read_states(state)
    states.fill_live(group_id, refresh=True)
    for uid in _sql(state, store.group_member_ids, group_id):
        states.fill_state(uid, group_id, refresh=True)


def warm_views(state: AppState, user_id: int) -> None:
    _read_states(state).all_unread(user_id)  # groups set, read states, live bitmaps


# --- activity ---------------------------------------------------------------------------------


def _json(value: Any) -> Any:
    return orjson.loads(orjson.dumps(value))


def check_activity(state: AppState, user_id: int) -> list[Difference]:
    keys = state.cache.keys
    scope = activity_feed.scope(user_id)
    names = activity_feed.all_keys(keys, user_id)
    cached = peek(state.cache, [("get", keys.version(scope)), ("hgetall", names[0]),
                                *[("get", k) for k in names[1:]]])
    before = _versions(state, [scope])
    snap = activity_feed.load_snapshot(state.db, user_id)
    after = _versions(state, [scope])
    if not _settled(version_copy(cached[0]), before, after, scope):
        return []
    out: list[Difference] = []
    exists, raw = cached[1]
    if exists:
        out += _differs("activity", names[0], activity_feed.decode_counts(raw), snap.counts,
                        user_id=user_id)
    truths = [snap.recent, snap.page_all, snap.page_unread]
    for name, (exists, raw), truth in zip(names[1:], cached[2:], truths, strict=True):
        if exists:
            out += _differs("activity", name, orjson.loads(raw), _json(truth),
                            user_id=user_id)
    return out


def rebuild_activity(state: AppState, user_id: int) -> None:
    activity_feed.refill(state.cache, state.filler, state.db, user_id, REBUILD_PATH)


def warm_activity(state: AppState, user_id: int) -> None:
    activity_feed.summary(state.cache, state.filler, state.db, user_id)  # fills all keys


# --- feeds: community followees and author set, personalized inputs and ranking ------------


def check_feeds(state: AppState, user_id: int) -> list[Difference]:
    keys = state.cache.keys
    ck = cf.CommunityKeys(keys)
    size = state.settings.author_cache_size
    follows, author = cf.follows_scope(user_id), cf.author_scope(user_id)
    colls = cf.colls_scope(user_id)
    head = peek(state.cache, [
        ("get", keys.version(follows)), ("smembers", ck.followees(user_id)),
        ("get", keys.version(author)), ("zrange", ck.author(user_id)),
        ("get", keys.version(colls)), ("smembers", ck.collectives(user_id)),
    ])
    scopes = [follows, author, colls]
    before = _versions(state, scopes)
    with state.db.session() as session:
        followees = sorted(posts_store.followees(session, user_id))
        member_of = posts_store.collectives_of(session, user_id)
        newest = posts_store.author_recent_keys(session, [user_id], size + 1)[user_id]
    after = _versions(state, scopes)
    out: list[Difference] = []
    who = {"user_id": user_id}
    exists, raw = head[1]
    if exists and _settled(version_copy(head[0]), before, after, follows):
        got = sorted(int(m) for m in raw if m != cf.SENTINEL.encode())
        out += _differs("feeds", ck.followees(user_id), got, followees, **who)
    exists, raw = head[5]
    if exists and _settled(version_copy(head[4]), before, after, colls):
        got = sorted(int(m) for m in raw if m != cf.SENTINEL.encode())
        out += _differs("feeds", ck.collectives(user_id), got, member_of, **who)
    exists, raw = head[3]
    if exists and _settled(version_copy(head[2]), before, after, author):
        got_keys = sorted(((int(s), int(m)) for m, s in raw if m != cf.SENTINEL.encode()),
                          reverse=True)
        complete = any(m == cf.SENTINEL.encode() for m, _ in raw)
        out += _differs("feeds", ck.author(user_id), (got_keys, complete),
                        (newest[:size], len(newest) <= size), **who)
    # The personalized inputs and ranking: the slice's own check.
    for key, cached, truth in ranked_feed_ops.check_user(state, user_id):
        out += _differs("feeds", key, cached, truth, **who)
    return out


def _followees_fill(state: AppState, user_id: int) -> None:
    key = cf.CommunityKeys(state.cache.keys).followees(user_id)
    state.filler.fill(
        "community_feed", cf.follows_scope(user_id), [key],
        lambda: _sql(state, posts_store.followees, user_id),
        lambda pipe, temps, ids: cf.stage_followees(pipe, temps[key], ids))


def _collectives_fill(state: AppState, user_id: int) -> None:
    key = cf.CommunityKeys(state.cache.keys).collectives(user_id)
    state.filler.fill(
        "community_feed", cf.colls_scope(user_id), [key],
        lambda: _sql(state, posts_store.collectives_of, user_id),
        lambda pipe, temps, ids: cf.stage_collectives(pipe, temps[key], ids))


def _author_fill(state: AppState, user_id: int) -> None:
    size = state.settings.author_cache_size

    def load(indices: list[int]) -> dict[int, tuple[list[tuple[int, int]], bool]]:
        newest = _sql(state, posts_store.author_recent_keys, [user_id], size + 1)[user_id]
        return {0: (newest[:size], len(newest) <= size)}

    targets = [(cf.author_scope(user_id), cf.CommunityKeys(state.cache.keys).author(user_id))]
    cf.fill_many(state.cache, state.filler, "community_feed", targets, load)


def rebuild_feeds(state: AppState, user_id: int) -> None:
    _followees_fill(state, user_id)
    _collectives_fill(state, user_id)
    _author_fill(state, user_id)
    ranked_feed_ops.rebuild_user(state, user_id, REBUILD_PATH)


def warm_feeds(state: AppState, user_id: int) -> None:
    from service import community_feed as service

    with app_context(state):
        followees = service.followees_of(user_id)
        service.FollowingSource(followees).next_keys(None, 20)  # their author sets
        service.viewer_collectives(user_id)
    ranked_feed_ops.warm_user(state, user_id)


# --- reels ------------------------------------------------------------------------------------


def _reels_load(state: AppState, user_id: int) -> Callable[[], list[reels_store.ListEntry]]:
    capacity = state.settings.max_recent_reel_views
    return lambda: _sql(state, reels_store.recent_views, user_id, capacity)


def check_reels(state: AppState, user_id: int) -> list[Difference]:
    keys = state.cache.keys
    scope, key = recent_reels.scope(user_id), recent_reels.key(keys, user_id)
    cached = peek(state.cache, [("get", keys.version(scope)), ("zrange", key)])
    before = _versions(state, [scope])
    truth = _reels_load(state, user_id)()
    after = _versions(state, [scope])
    exists, raw = cached[1]
    if not exists or not _settled(version_copy(cached[0]), before, after, scope):
        return []
    got = sorted((int(m), int(s)) for m, s in raw if m != recent_reels.SENTINEL.encode())
    marked = any(m == recent_reels.SENTINEL.encode() for m, _ in raw)
    want = sorted((e.reel_id, e.viewed_at_ms) for e in truth)
    return _differs("reels", key, (got, marked), (want, True), user_id=user_id)


def rebuild_reels(state: AppState, user_id: int) -> None:
    k = recent_reels.key(state.cache.keys, user_id)
    state.filler.fill(recent_reels.PATH, recent_reels.scope(user_id), [k],
                      _reels_load(state, user_id),
                      lambda pipe, temps, data: recent_reels.stage(pipe, temps[k], data))


def warm_reels(state: AppState, user_id: int) -> None:
    recent_reels.recent_page(state, user_id, 0, 20, _reels_load(state, user_id))


# --- the registry ----------------------------------------------------------------------------

READ_PATHS: dict[str, ReadPath] = {
    "views": ReadPath("views", check_views, rebuild_views, warm_views,
                      check_views_group, rebuild_views_group),
    "activity": ReadPath("activity", check_activity, rebuild_activity, warm_activity),
    "feeds": ReadPath("feeds", check_feeds, rebuild_feeds, warm_feeds),
    "reels": ReadPath("reels", check_reels, rebuild_reels, warm_reels),
}
assert set(READ_PATHS) == set(store.PATHS)


def get(names: Sequence[str] | None = None) -> list[ReadPath]:
    """The read paths named (all by default); ``KeyError`` for an unknown name."""
    return [READ_PATHS[n] for n in (names or READ_PATHS)]


def group_ids(state: AppState, after: int = 0, batch: int = 500) -> Iterator[int]:
    while True:
        with state.db.session() as session:
            ids = store.group_ids(session, after, batch)
        yield from ids
        if len(ids) < batch:
            return
        after = ids[-1]
