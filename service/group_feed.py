"""API section 1: the group feed with view tracking (``has_viewed``, unread counts).

Only members of a group (and admins) see its items: others get ``403`` on the group feed
and ``404`` on its items. Items live in Postgres; read state is served from Redis by
``cache/read_state.py`` and recorded in ``feed_item_views`` (``storage/group_feed.py``).

Caps (a ``400`` beyond them): ``limit`` 1-200; ``title`` 1-300 characters, ``content_type``
1-50, ``body`` up to 100,000; a ``views`` cursor of up to 200 characters.
"""

from __future__ import annotations

import base64
import binascii
from datetime import UTC, datetime, timedelta
from typing import Any

from flask import Response, g
from marshmallow import EXCLUDE, Schema, fields, validate
from sqlalchemy.orm import Session

from cache import read_state
from cache.read_state import ReadStates
from service.api import Blueprint
from service.auth import Caller, login_required
from service.errors import ApiError, Forbidden, NotFound
from service.fields import MAX_ID, Id, UtcDateTime
from service.state import state
from storage import group_feed as store
from storage.models import FeedItem

bp = Blueprint("group_feed", __name__, description="Group feed with view tracking")

MAX_LIMIT = 200
DEFAULT_LIMIT = 50
MAX_BODY_CHARS = 100_000
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def QueryId(**kwargs: Any) -> fields.Integer:  # noqa: N802 - reads like a field class
    """A positive 64-bit id in a query string (parsed from text, so not strict)."""
    return fields.Integer(validate=validate.Range(1, MAX_ID), **kwargs)


def Limit() -> fields.Integer:  # noqa: N802
    return fields.Integer(load_default=DEFAULT_LIMIT, validate=validate.Range(1, MAX_LIMIT))


class QuerySchema(Schema):
    class Meta:
        unknown = EXCLUDE  # extra query parameters (cache busters...) are ignored


class FeedQuery(QuerySchema):
    group = QueryId(required=True)
    limit = Limit()
    before = QueryId(load_default=None, metadata={"description": "older items only"})


class GroupQuery(QuerySchema):
    group = QueryId(required=True)


class UnreadQuery(QuerySchema):
    group = QueryId(load_default=None)


class ViewsQuery(QuerySchema):
    limit = Limit()
    cursor = fields.String(load_default=None, validate=validate.Length(1, 200))


class FeedItemIn(Schema):
    group = Id(required=True)
    title = fields.String(required=True, validate=validate.Length(1, 300))
    content_type = fields.String(required=True, validate=validate.Length(1, 50))
    body = fields.String(
        load_default=None, allow_none=True, validate=validate.Length(max=MAX_BODY_CHARS)
    )


class FeedItemOut(Schema):
    id = fields.Integer(required=True)
    group = fields.Integer(required=True)
    title = fields.String(required=True)
    content_type = fields.String(required=True)
    author_id = fields.Integer(required=True)
    created_at = UtcDateTime(required=True)
    has_viewed = fields.Boolean(required=True)


class CreatedItemOut(FeedItemOut):
    body = fields.String(allow_none=True)


class DetailOut(Schema):
    detail = fields.String(required=True)


class MarkViewedOut(DetailOut):
    viewed_at = UtcDateTime(required=True)


class MarkAllOut(DetailOut):
    count = fields.Integer(required=True)


class UnreadOut(Schema):
    """With ``group``: ``{"group","unread_count"}``; without: ``{"groups","total"}``."""

    group = fields.Integer()
    unread_count = fields.Integer()
    groups = fields.Dict(keys=fields.String(), values=fields.Integer())
    total = fields.Integer()


class ViewerOut(Schema):
    user_id = fields.Integer(required=True)
    viewed_at = UtcDateTime(required=True)


class ViewsOut(Schema):
    count = fields.Integer(required=True)
    viewers = fields.List(fields.Nested(ViewerOut), required=True)
    next_cursor = fields.String(allow_none=True, required=True)


# --- helpers -------------------------------------------------------------------------------


def _read_states() -> ReadStates:
    app_state = state()
    return ReadStates(app_state.cache, app_state.filler, app_state.db)


def _item_out(item: FeedItem, has_viewed: bool) -> dict[str, Any]:
    return {
        "id": item.id,
        "group": item.group_id,
        "title": item.title,
        "content_type": item.content_type,
        "author_id": item.author_id,
        "created_at": item.created_at,
        "has_viewed": has_viewed,
    }


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


# --- endpoints ------------------------------------------------------------------------------


@bp.route("/api/v1/messaging/feed/", methods=["POST"])
@login_required
@bp.arguments(FeedItemIn)
@bp.response(201, CreatedItemOut)
def create_item(body: dict[str, Any]):
    """Post an item to a group's feed (members and admins)."""
    caller: Caller = g.user
    group_id = body["group"]
    app_state = state()
    with app_state.uow() as uow:
        if not caller.is_admin and not store.is_member(uow.session, group_id, caller.id):
            _deny_group(uow.session, group_id)
        change = uow.change(read_state.live_scope(group_id))
        item = store.create_item(
            uow.session, group_id, caller.id, body["title"], body["content_type"], body["body"]
        )
        if item is None:
            raise NotFound("Group not found", code="group_not_found")
        read_state.on_item_created(change, app_state.cache.keys, group_id, item.position)
        uow.commit()
    return {**_item_out(item, False), "body": item.body}


@bp.route("/api/v1/messaging/feed/", methods=["GET"])
@login_required
@bp.arguments(FeedQuery, location="query")
@bp.response(200, FeedItemOut(many=True))
def list_feed(args: dict[str, Any]):
    """A group's live items, newest first, each with the caller's ``has_viewed``."""
    caller: Caller = g.user
    group_id = args["group"]
    with state().db.session() as session:
        if caller.is_admin:
            _check_group(session, group_id, caller)
        items = store.list_items(session, group_id, args["limit"], args["before"])
    page = _read_states().page(
        caller.id, group_id, [item.position for item in items], check_member=not caller.is_admin
    )
    if not page.member:
        with state().db.session() as session:
            _deny_group(session, group_id)
    return [_item_out(item, viewed) for item, viewed in zip(items, page.viewed, strict=True)]


@bp.route("/api/v1/messaging/feed/<id:item_id>/", methods=["DELETE"])
@login_required
@bp.response(204)
def delete_item(item_id: int):
    """Soft delete (author or admin): gone from feeds and from every unread count."""
    caller: Caller = g.user
    app_state = state()
    with app_state.uow() as uow:
        item = _visible_item(uow.session, item_id, caller)
        _require_author(item, caller)
        change = uow.change(read_state.live_scope(item.group_id))
        position = store.soft_delete_item(uow.session, item_id)
        if position is None:  # deleted meanwhile
            raise NotFound("Feed item not found", code="item_not_found")
        read_state.on_item_deleted(change, app_state.cache.keys, item.group_id, position)
        uow.commit()
    return Response(status=204)


@bp.route("/api/v1/messaging/feed/<id:item_id>/mark-viewed/", methods=["POST"])
@login_required
@bp.response(200, MarkViewedOut)
def mark_viewed(item_id: int):
    """Idempotent: repeat calls keep the first ``viewed_at``."""
    caller: Caller = g.user
    app_state = state()
    with app_state.uow() as uow:
        item = _visible_item(uow.session, item_id, caller)
        viewed_at = store.get_view(uow.session, item_id, caller.id)
        if viewed_at is None:
            # The scope's version row lock first: writers of this read state serialise.
            change = uow.change(read_state.scope(caller.id, item.group_id))
            viewed_at, _ = store.add_view(uow.session, item, caller.id)
            read_state.on_viewed(
                change, app_state.cache.keys, caller.id, item.group_id, item.position
            )
            uow.commit()
    return {"detail": "Marked as viewed", "viewed_at": viewed_at}


@bp.route("/api/v1/messaging/feed/<id:item_id>/mark-viewed/", methods=["DELETE"])
@login_required
@bp.response(200, DetailOut)
def mark_unread(item_id: int):
    caller: Caller = g.user
    app_state = state()
    with app_state.uow() as uow:
        item = _visible_item(uow.session, item_id, caller)
        if store.get_view(uow.session, item_id, caller.id) is not None:
            change = uow.change(read_state.scope(caller.id, item.group_id))
            if store.remove_view(uow.session, item_id, caller.id):
                read_state.on_unread(change, app_state.cache.keys, caller.id, item.group_id)
            uow.commit()
    return {"detail": "Marked as unread"}


@bp.route("/api/v1/messaging/feed/mark-all-viewed/", methods=["POST"])
@login_required
@bp.arguments(GroupQuery, location="query")
@bp.response(200, MarkAllOut)
def mark_all_viewed(args: dict[str, Any]):
    """One SQL statement in Postgres, O(1) in Redis (a watermark)."""
    caller: Caller = g.user
    group_id = args["group"]
    app_state = state()
    with app_state.uow() as uow:
        _check_group(uow.session, group_id, caller)
        change = uow.change(read_state.scope(caller.id, group_id))
        count, watermark = store.mark_all_viewed(uow.session, group_id, caller.id)
        read_state.on_all_viewed(change, app_state.cache.keys, caller.id, group_id, watermark)
        uow.commit()
    return {"detail": f"Marked {count} items as viewed", "count": count}


@bp.route("/api/v1/messaging/feed/unread-count/", methods=["GET"])
@login_required
@bp.arguments(UnreadQuery, location="query")
@bp.response(200, UnreadOut)
def unread_count(args: dict[str, Any]):
    """With ``group``: that group's count; without: per group over the caller's groups."""
    caller: Caller = g.user
    group_id = args["group"]
    if group_id is None:
        counts = _read_states().all_unread(caller.id)
        return {"groups": counts, "total": sum(counts.values())}
    if caller.is_admin:
        with state().db.session() as session:
            _check_group(session, group_id, caller)
    member, count = _read_states().group_unread(
        caller.id, group_id, check_member=not caller.is_admin
    )
    if not member:
        with state().db.session() as session:
            _deny_group(session, group_id)
    return {"group": group_id, "unread_count": count}


@bp.route("/api/v1/messaging/feed/<id:item_id>/views/", methods=["GET"])
@login_required
@bp.arguments(ViewsQuery, location="query")
@bp.response(200, ViewsOut)
def item_views(args: dict[str, Any], item_id: int):
    """Who viewed an item (author or admin), most recent first, cursor-paginated."""
    caller: Caller = g.user
    after = _decode_cursor(args["cursor"]) if args["cursor"] else None
    limit = args["limit"]
    with state().db.session() as session:
        item = _visible_item(session, item_id, caller)
        _require_author(item, caller)
        total, rows = store.viewers(session, item_id, limit + 1, after)
    more = len(rows) > limit
    rows = rows[:limit]
    next_cursor = _encode_cursor(rows[-1].viewed_at, rows[-1].user_id) if more else None
    return {
        "count": total,
        "viewers": [{"user_id": r.user_id, "viewed_at": r.viewed_at} for r in rows],
        "next_cursor": next_cursor,
    }
