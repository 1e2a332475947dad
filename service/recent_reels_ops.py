"""The recently viewed reels' use cases (API section 5): plain functions of the service's
state, called by the routes in ``service/recent_reels.py``. Each user's list lives in
Postgres (``storage.recent_reels``) and in a Redis sorted set (``cache.recent_reels``); a
view commits to Postgres first, then applies to Redis.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from cache import recent_reels
from service.bootstrap import AppState
from service.errors import ApiError, NotFound
from storage import recent_reels as storage
from storage.recent_reels import ListEntry, ViewWrite, ms_to_datetime

REEL_NOT_FOUND = "Reel not found"
REEL_NOT_AVAILABLE = "Reel is not available"
REEL_FIELDS = (
    "reel_id", "video_url", "description", "viewed_at", "view_duration", "likes_count",
    "views_count", "is_liked",
)
# Fields that need the page's query in Postgres (the others come from the list itself).
DETAIL_FIELDS = frozenset(REEL_FIELDS) - {"reel_id", "viewed_at"}


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
    with app_state.uow() as uow:
        # The user's version row first (serialises their writers), then the reels.
        change = uow.change(recent_reels.scope(user_id))
        recorded = storage.record_views(
            uow.session, user_id,
            [ViewWrite(r.reel_id, r.viewed_at_ms, r.view_duration) for r in requests],
            capacity)
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
            recent_reels.record(change, app_state.cache.keys, user_id, recorded.upserted,
                                recorded.trimmed, capacity, app_state.cache.idle_ttl)
            uow.commit()
    return accepted, rejected


def recent_page(app_state: AppState, user_id: int, page: int, per_page: int,
                wanted: Sequence[str]) -> dict:
    """One page of the user's recently viewed reels, newest first, in API.md's shape."""
    capacity = app_state.settings.max_recent_reel_views

    def load() -> list[ListEntry]:
        with app_state.db.session() as session:
            return storage.recent_views(session, user_id, capacity)

    result = recent_reels.recent_page(app_state, user_id, (page - 1) * per_page, per_page, load)
    details: dict[int, storage.ReelDetails] = {}
    need_details = bool(DETAIL_FIELDS.intersection(wanted))
    if need_details and result.entries:
        with app_state.db.session() as session:
            details = storage.page_details(session, user_id, [e.reel_id for e in result.entries])
    reels = []
    for entry in result.entries:
        row: dict[str, Any] = {
            "reel_id": entry.reel_id, "viewed_at": ms_to_datetime(entry.viewed_at_ms)
        }
        if need_details:
            detail = details.get(entry.reel_id)
            if detail is None:
                continue  # the reel row is gone (deleted between the two reads)
            row.update(asdict(detail))
        reels.append({name: row[name] for name in wanted})
    pages = math.ceil(result.total / per_page)
    return {
        "status": "success",
        "data": {
            "reels": reels,
            "pagination": {
                "total": result.total,
                "pages": pages,
                "current_page": page,
                "per_page": per_page,
                "has_next": page < pages,
                "has_prev": page > 1,
            },
        },
    }


def _reel_for_like(session, reel_id: int, must_be_available: bool) -> None:
    reel = storage.get_reel(session, reel_id)
    if reel is None:
        raise NotFound(REEL_NOT_FOUND)
    if must_be_available and not reel.is_available:
        raise ApiError(REEL_NOT_AVAILABLE, code="reel_not_available")


def like(app_state: AppState, user_id: int, reel_id: int) -> bool:
    """Like an available reel; True if this call added the like (the count moves once)."""
    with app_state.uow() as uow:
        _reel_for_like(uow.session, reel_id, must_be_available=True)
        added = storage.like(uow.session, user_id, reel_id)
        uow.commit()
    return added


def unlike(app_state: AppState, user_id: int, reel_id: int) -> bool:
    """Remove the user's like; True if this call removed it."""
    with app_state.uow() as uow:
        _reel_for_like(uow.session, reel_id, must_be_available=False)
        removed = storage.unlike(uow.session, user_id, reel_id)
        uow.commit()
    return removed
