"""The recently viewed reels' use cases (API section 5): plain functions of the service's
state, called by the routes in ``service/recent_reels.py``. Each user's list lives in
Postgres (``storage.recent_reels``) and in a Redis sorted set (``cache.recent_reels``); a
view commits to Postgres first, then applies to Redis.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from cache import recent_reels
from cache.versioned import Change
from service.bootstrap import AppState
from service.errors import ApiError, NotFound
from service.fields import isoformat
from storage import recent_reels as storage
from storage.recent_reels import ListEntry, ViewWrite, ms_to_datetime

REEL_NOT_FOUND = "Reel not found"
REEL_NOT_AVAILABLE = "Reel is not available"
REEL_FIELDS = (
    "reel_id", "video_url", "description", "viewed_at", "view_duration", "likes_count",
    "views_count", "is_liked",
)
# Fields every viewer sees alike: the reel's entity (cache/entities.py); the others come
# from the user's list and their hash beside it.
SHARED_FIELDS = frozenset({"video_url", "description", "likes_count", "views_count"})


@dataclass(frozen=True)
class ViewRequest:
    reel_id: int
    view_duration: int | None
    viewed_at_ms: int


@dataclass(frozen=True)
class Rejection:
    reel_id: Any
    error: str
    status: int = 400


def track_views(
    app_state: AppState, user_id: int, requests: Sequence[ViewRequest]
) -> tuple[int, dict[int, Rejection]]:
    """Record the views of existing, available reels in one transaction and one Redis
    apply; returns (views tracked, the others' rejections by position in ``requests``)."""
    capacity = app_state.settings.max_recent_reel_views
    keys = app_state.cache.keys
    with app_state.uow() as uow:
        # The user's version row first (serialises their writers), then the reels, then
        # the reels' version rows (their counters' changes).
        change = uow.change(recent_reels.scope(user_id), recent_reels.scope_keys(keys, user_id))
        recorded = storage.record_views(
            uow.session, user_id,
            [ViewWrite(r.reel_id, r.viewed_at_ms, r.view_duration) for r in requests],
            capacity,
            {r.reel_id: recent_reels.reel_scope(r.reel_id).row_name for r in requests})
        accepted = 0
        rejected: dict[int, Rejection] = {}
        for i, r in enumerate(requests):
            reel = recorded.reels.get(r.reel_id)
            if reel is None:
                rejected[i] = Rejection(r.reel_id, REEL_NOT_FOUND, 404)
            elif not reel.is_available:
                rejected[i] = Rejection(r.reel_id, REEL_NOT_AVAILABLE)
            else:
                accepted += 1
        if accepted:
            recent_reels.record(change, keys, user_id, recorded.upserted,
                                recorded.trimmed, capacity, app_state.cache.idle_ttl)
            for reel_id, version in sorted(recorded.versions.items()):
                reel_change = uow.adopt(Change(recent_reels.reel_scope(reel_id), version,
                                               [recent_reels.reel_key(keys, reel_id)]))
                recent_reels.on_counts(reel_change, keys, reel_id,
                                       views_count=recorded.views_counts[reel_id])
            uow.commit()
    return accepted, rejected


@functools.lru_cache(maxsize=16384)
def _viewed_at(ms: int) -> bytes:
    """A view time's JSON, rendered once per process for each time seen (a user's page
    repeats the same times until they view another reel)."""
    return orjson.dumps(isoformat(ms_to_datetime(ms)))


def _viewer_values(entry: ListEntry) -> dict[str, bytes]:
    return {
        "reel_id": b"%d" % entry.reel_id,
        "viewed_at": _viewed_at(entry.viewed_at_ms),
        "view_duration": b"null" if entry.view_duration is None
        else b"%d" % entry.view_duration,
        "is_liked": b"true" if entry.is_liked else b"false",
    }


# Every field, in REEL_FIELDS' order: one format per reel (the usual request names no
# ``fields``), instead of a join over the names.
_FULL_REEL = (b'{"reel_id":%d,"video_url":%s,"description":%s,"viewed_at":%s,'
              b'"view_duration":%s,"likes_count":%s,"views_count":%s,"is_liked":%s}')


def _full_reel(entry: ListEntry, shared: dict[bytes, bytes]) -> bytes:
    return _FULL_REEL % (
        entry.reel_id, shared[b"video_url"], shared[b"description"],
        _viewed_at(entry.viewed_at_ms),
        b"null" if entry.view_duration is None else b"%d" % entry.view_duration,
        shared[b"likes_count"], shared[b"views_count"],
        b"true" if entry.is_liked else b"false")


def _some_fields(entry: ListEntry, shared: dict[bytes, bytes] | None,
                 names: Sequence[tuple[str, bytes, bytes]]) -> bytes:
    mine = _viewer_values(entry)
    return b"{" + b",".join(
        label + (shared[field] if name in SHARED_FIELDS else mine[name])  # type: ignore[index]
        for name, label, field in names) + b"}"


def recent_page(app_state: AppState, user_id: int, page: int, per_page: int,
                wanted: Sequence[str]) -> bytes:
    """One page of the user's recently viewed reels, newest first, in API.md's shape: the
    JSON document, assembled from cached bytes (no schema dump per reel; RecentReelsOut in
    service/recent_reels.py stays the contract). Warm: two round trips, no SQL."""
    capacity = app_state.settings.max_recent_reel_views

    def load() -> list[ListEntry]:
        with app_state.db.read() as session:
            return storage.recent_views(session, user_id, capacity)

    result = recent_reels.recent_page(app_state, user_id, (page - 1) * per_page, per_page, load)
    shared: dict[int, dict[bytes, bytes]] = {}
    need_shared = bool(SHARED_FIELDS.intersection(wanted))
    if need_shared and result.entries:
        shared = recent_reels.page_reels(app_state, result.entries)
    # A reel whose row is gone (deleted between the two reads) is left out.
    entries = [e for e in result.entries if e.reel_id in shared] if need_shared \
        else result.entries
    if tuple(wanted) == REEL_FIELDS:
        reels = [_full_reel(e, shared[e.reel_id]) for e in entries]
    else:
        names = [(name, b'"%s":' % name.encode(), name.encode()) for name in wanted]
        reels = [_some_fields(e, shared.get(e.reel_id), names) for e in entries]
    pages = math.ceil(result.total / per_page)
    pagination = orjson.dumps({
        "total": result.total,
        "pages": pages,
        "current_page": page,
        "per_page": per_page,
        "has_next": page < pages,
        "has_prev": page > 1,
    })
    return (b'{"status":"success","data":{"reels":[' + b",".join(reels)
            + b'],"pagination":' + pagination + b"}}")


def _toggle_like(app_state: AppState, user_id: int, reel_id: int, liked: bool) -> bool:
    """Like or unlike; True if this call changed it. The reel's ``likes_count`` and the
    user's ``is_liked`` (if the reel is in their list) change in the same outbox change.

    Three statements when it changes something (the user's version bump, the like with
    its count, reel version and list check, the outbox row), one commit; two and a
    rollback when it changes nothing (already liked, a missing or unavailable reel)."""
    keys = app_state.cache.keys
    reel_scope = recent_reels.reel_scope(reel_id)
    with app_state.uow() as uow:
        # Lock order as a view's: the user's version row, the reel's row, its version row.
        # The user's row lock also makes the list check exact (a view of this reel by this
        # user waits for it).
        user_change = uow.change(recent_reels.scope(user_id),
                                 recent_reels.scope_keys(keys, user_id))
        result = (storage.like if liked else storage.unlike)(
            uow.session, user_id, reel_id, reel_scope.row_name)
        if not result.found:
            raise NotFound(REEL_NOT_FOUND)
        if liked and not result.available:
            raise ApiError(REEL_NOT_AVAILABLE, code="reel_not_available")
        if not result.changed:
            return False  # rolled back: nothing to commit, no version moved
        reel_change = uow.adopt(Change(reel_scope, result.version,
                                       [recent_reels.reel_key(keys, reel_id)]))
        recent_reels.on_counts(reel_change, keys, reel_id, likes_count=result.likes_count)
        if result.in_list:
            recent_reels.on_like(user_change, keys, user_id, reel_id, liked)
        uow.commit()
    return True


def like(app_state: AppState, user_id: int, reel_id: int) -> bool:
    """Like an available reel; True if this call added the like (the count moves once)."""
    return _toggle_like(app_state, user_id, reel_id, True)


def unlike(app_state: AppState, user_id: int, reel_id: int) -> bool:
    """Remove the user's like; True if this call removed it."""
    return _toggle_like(app_state, user_id, reel_id, False)
