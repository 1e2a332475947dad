"""The group feed's use cases (API section 1): plain functions of the service's state and
the caller, called by the routes in ``service/group_feed.py``. Read state comes from Redis
(``cache/group_feed.py``), items and views from Postgres (``storage/group_feed.py``).

Only members of a group (and admins) see its items: others get ``403`` on the group feed
and ``404`` on its items.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session

from cache import group_feed as gf_cache
from cache.group_feed import ReadStates
from cache.versioned import Change
from service.auth import Caller
from service.bootstrap import AppState
from service.errors import ApiError, Forbidden, NotFound
from service.fields import MAX_ID
from storage import group_feed as store
from storage.models import FeedItem

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _read_states(app_state: AppState) -> ReadStates:
    return ReadStates(app_state.cache, app_state.filler, app_state.db)


def item_out(item: FeedItem, has_viewed: bool) -> dict[str, Any]:
    return {
        "id": item.id,
        "group": item.group_id,
        "title": item.title,
        "content_type": item.content_type,
        "author_id": item.author_id,
        "created_at": item.created_at,
        "has_viewed": has_viewed,
    }


# A page is assembled from the items' rendered entities (``cache.group_feed.render_item``:
# each item's JSON object without its closing brace) and each viewer's ``"has_viewed"``,
# so no schema runs per item on the hot path; FeedItemOut (service/group_feed.py) stays
# the contract and a test checks pages against it.

_VIEWED = (b',"has_viewed":false}', b',"has_viewed":true}')


def assemble_page(items: list[tuple[bytes, bool]]) -> bytes:
    """The page's JSON array from rendered fragments and each item's ``has_viewed``."""
    if not items:
        return b"[]"
    # Per item in C (zip, map), not a Python generator step per item.
    fragments, viewed = zip(*items, strict=True)
    return b"[" + b",".join(map(bytes.__add__, fragments, map(_VIEWED.__getitem__, viewed))
                            ) + b"]"
def _deny_group(session: Session, group_id: int) -> None:
    """Raise the answer for a caller who may not see ``group_id``: 404 or 403."""
    if not store.group_exists(session, group_id):
        raise NotFound("Group not found", code="group_not_found")
    raise Forbidden("You are not a member of this group", code="not_a_member")


def _check_group(session: Session, group_id: int, caller: Caller) -> None:
    """Members and admins pass; others get 403 (404 for an unknown group)."""
    if caller.is_admin:
        if not store.group_exists(session, group_id):
            raise NotFound("Group not found", code="group_not_found")
    elif not store.is_member(session, group_id, caller.id):
        _deny_group(session, group_id)


def _visible_item(session: Session, item_id: int, caller: Caller) -> FeedItem:
    """The live item if the caller may see it (member of its group or admin), else 404."""
    item = store.get_live_item(session, item_id)
    if item is None or (
        not caller.is_admin and not store.is_member(session, item.group_id, caller.id)
    ):
        raise NotFound("Feed item not found", code="item_not_found")
    return item


def _require_author(item: FeedItem, caller: Caller) -> None:
    if not caller.is_admin and item.author_id != caller.id:
        raise Forbidden("Only the item's author or an admin may do this", code="not_author")


def _encode_cursor(viewed_at: datetime, user_id: int) -> str:
    micros = (viewed_at - EPOCH) // timedelta(microseconds=1)
    return base64.urlsafe_b64encode(f"{micros}:{user_id}".encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, int]:
    """Raises a 400 ``invalid_cursor`` for anything ``_encode_cursor`` did not make."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
        micros, user_id = (int(part) for part in raw.split(":"))
        if not 1 <= user_id <= MAX_ID:
            raise ValueError(user_id)
        return EPOCH + timedelta(microseconds=micros), user_id
    except (ValueError, OverflowError, binascii.Error, UnicodeDecodeError) as exc:
        raise ApiError("Invalid cursor", code="invalid_cursor") from exc


def create_item(app_state: AppState, caller: Caller, group_id: int, title: str,
                content_type: str, body: str) -> dict[str, Any]:
    """Post an item to a group's feed (members and admins)."""
    with app_state.uow() as uow:
        if not caller.is_admin and not store.is_member(uow.session, group_id, caller.id):
            _deny_group(uow.session, group_id)
        change = uow.change(gf_cache.live_scope(group_id))
        item = store.create_item(uow.session, group_id, caller.id, title, content_type, body)
        if item is None:
            raise NotFound("Group not found", code="group_not_found")
        gf_cache.on_item_created(change, app_state.cache.keys, group_id, item.position,
                                 item.id)
        uow.commit()
    return {**item_out(item, False), "body": item.body}


def list_page(app_state: AppState, caller: Caller, group_id: int, limit: int,
              before: int | None) -> bytes:
    """A group's live items, newest first, each with the caller's ``has_viewed``: the JSON
    array, assembled from the cached entities (``cache.group_feed.ReadStates.cached_page``:
    warm, 0 SQL and 2 Redis round trips), else from Postgres (a page past the newest
    ``ITEMS_LIST_SIZE`` items, or Redis down)."""
    states = _read_states(app_state)
    checked = False

    def check_admin() -> None:
        nonlocal checked
        with app_state.db.read() as session:
            _check_group(session, group_id, caller)
        checked = True

    # An admin's group check needs Postgres only when the group's list is not cached (a
    # cached list means the group exists: groups are never deleted).
    cached = states.cached_page(caller.id, group_id, limit, before,
                                check_member=not caller.is_admin,
                                before_fill=check_admin if caller.is_admin else lambda: None)
    if cached is not None:
        if not cached.member:
            with app_state.db.read() as session:
                _deny_group(session, group_id)
        return assemble_page(cached.items)
    with app_state.db.read() as session:
        if caller.is_admin and not checked:
            _check_group(session, group_id, caller)
        items = store.list_items(session, group_id, limit, before)
    page = states.page(
        caller.id, group_id, [item.position for item in items], check_member=not caller.is_admin
    )
    if not page.member:
        with app_state.db.read() as session:
            _deny_group(session, group_id)
    return assemble_page([(gf_cache.render_item(item)["j"], viewed)
                          for item, viewed in zip(items, page.viewed, strict=True)])


def delete_item(app_state: AppState, caller: Caller, item_id: int) -> None:
    """Soft delete (author or admin): gone from feeds and from every unread count."""
    with app_state.uow() as uow:
        item = _visible_item(uow.session, item_id, caller)
        _require_author(item, caller)
        change = uow.change(gf_cache.live_scope(item.group_id))
        position = store.soft_delete_item(uow.session, item_id)
        if position is None:  # deleted meanwhile
            raise NotFound("Feed item not found", code="item_not_found")
        gf_cache.on_item_deleted(change, app_state.cache.keys, item.group_id, position,
                                 item_id)
        uow.commit()


def _viewer_item(session: Session, item_id: int, caller: Caller) -> store.ViewerItem:
    """``_visible_item`` with the caller's view of it, in one statement."""
    item = store.viewer_item(session, item_id, caller.id)
    if item is None or not (caller.is_admin or item.is_member):
        raise NotFound("Feed item not found", code="item_not_found")
    return item


def mark_viewed(app_state: AppState, caller: Caller, item_id: int) -> datetime:
    """Idempotent: repeat calls keep (and return) the first ``viewed_at``. A first view is
    three statements (the item with the caller's membership and view; the version bump
    with the view; the outbox row) and one commit; a repeat is one statement."""
    with app_state.uow() as uow:
        item = _viewer_item(uow.session, item_id, caller)
        viewed_at = item.viewed_at
        if viewed_at is None:
            # The scope's version row lock first (in the statement): writers of this read
            # state serialise.
            scope = gf_cache.scope(caller.id, item.group_id)
            viewed_at, _, version = store.add_view_bumping(uow.session, item, caller.id,
                                                           scope.row_name)
            change = uow.adopt(Change(scope, version, []))
            gf_cache.on_viewed(
                change, app_state.cache.keys, caller.id, item.group_id, item.position
            )
            uow.commit()
    return viewed_at


def mark_unread(app_state: AppState, caller: Caller, item_id: int) -> None:
    with app_state.uow() as uow:
        item = _viewer_item(uow.session, item_id, caller)
        if item.viewed_at is not None:
            change = uow.change(gf_cache.scope(caller.id, item.group_id))
            if store.remove_view(uow.session, item_id, caller.id):
                gf_cache.on_unread(change, app_state.cache.keys, caller.id, item.group_id)
            uow.commit()


def mark_all_viewed(app_state: AppState, caller: Caller, group_id: int) -> int:
    """One SQL statement in Postgres, O(1) in Redis (a watermark); returns how many items
    were newly marked. A member with nothing unread (the cached count, one round trip) gets
    0 without the statement: a repeated mark-all of a big group costs no database work."""
    if not caller.is_admin:
        member, unread = _read_states(app_state).group_unread(caller.id, group_id,
                                                              check_member=True)
        if member and unread == 0:
            return 0
    with app_state.uow() as uow:
        _check_group(uow.session, group_id, caller)
        change = uow.change(gf_cache.scope(caller.id, group_id))
        count, watermark = store.mark_all_viewed(uow.session, group_id, caller.id)
        gf_cache.on_all_viewed(change, app_state.cache.keys, caller.id, group_id, watermark)
        uow.commit()
    return count


def unread_counts(app_state: AppState, caller: Caller) -> dict[int, int]:
    """The caller's unread count per group, over their groups."""
    return _read_states(app_state).all_unread(caller.id)


def group_unread(app_state: AppState, caller: Caller, group_id: int) -> int:
    """One group's unread count for the caller (403/404 if they may not see it)."""
    if caller.is_admin:
        with app_state.db.read() as session:
            _check_group(session, group_id, caller)
    member, count = _read_states(app_state).group_unread(
        caller.id, group_id, check_member=not caller.is_admin
    )
    if not member:
        with app_state.db.read() as session:
            _deny_group(session, group_id)
    return count


@dataclass
class Viewers:
    count: int
    viewers: list[dict[str, Any]]
    next_cursor: str | None


def item_viewers(app_state: AppState, caller: Caller, item_id: int, limit: int,
                 cursor: str | None) -> Viewers:
    """Who viewed an item (author or admin), most recent first, cursor-paginated."""
    after = _decode_cursor(cursor) if cursor else None
    with app_state.db.read() as session:
        item = _visible_item(session, item_id, caller)
        _require_author(item, caller)
        total, rows = store.viewers(session, item_id, limit + 1, after)
    more = len(rows) > limit
    rows = rows[:limit]
    next_cursor = _encode_cursor(rows[-1].viewed_at, rows[-1].user_id) if more else None
    return Viewers(total, [{"user_id": r.user_id, "viewed_at": r.viewed_at} for r in rows],
                   next_cursor)
