"""API section 1: the group feed with view tracking (``has_viewed``, unread counts).

Only members of a group (and admins) see its items: others get ``403`` on the group feed
and ``404`` on its items. Items live in Postgres; read state is served from Redis by
``cache/group_feed.py`` and recorded in ``feed_item_views`` (``storage/group_feed.py``).

Caps (a ``400`` beyond them): ``limit`` 1-200; ``title`` 1-300 characters, ``content_type``
1-50, ``body`` up to 100,000; a ``views`` cursor of up to 200 characters.
"""

from __future__ import annotations

from typing import Any

from flask import Response, g
from marshmallow import EXCLUDE, Schema, fields, validate

from service import group_feed_ops as ops
from service.api import Blueprint, json_response
from service.auth import login_required
from service.fields import MAX_ID, Id, UtcDateTime
from service.state import state

bp = Blueprint("group_feed", __name__, description="Group feed with view tracking")

MAX_LIMIT = 200
DEFAULT_LIMIT = 50
MAX_BODY_CHARS = 100_000


def QueryId(**kwargs: Any) -> fields.Integer:  # noqa: N802 - reads like a field class
    """A positive 64-bit id in a query string (parsed from text, so not strict)."""
    return fields.Integer(validate=validate.Range(1, MAX_ID), **kwargs)


def Limit() -> fields.Integer:  # noqa: N802
    return fields.Integer(load_default=DEFAULT_LIMIT, validate=validate.Range(1, MAX_LIMIT))


class QuerySchema(Schema):
    class Meta:
        unknown = EXCLUDE  # extra query parameters (cache busters...) are ignored


class FeedQuery(QuerySchema):
    MEMO_QUERY = True  # its answer depends on the query string alone (service/api.py)
    group = QueryId(required=True)
    limit = Limit()
    before = QueryId(load_default=None, metadata={"description": "older items only"})


class GroupQuery(QuerySchema):
    MEMO_QUERY = True
    group = QueryId(required=True)


class UnreadQuery(QuerySchema):
    MEMO_QUERY = True
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


# --- endpoints: parse, call the use case (service/group_feed_ops.py), render ---------------


@bp.route("/api/v1/messaging/feed/", methods=["POST"])
@login_required
@bp.arguments(FeedItemIn)
@bp.response(201, CreatedItemOut)
def create_item(body: dict[str, Any]):
    """Post an item to a group's feed (members and admins)."""
    return ops.create_item(state(), g.user, body["group"], body["title"],
                           body["content_type"], body["body"])


@bp.route("/api/v1/messaging/feed/", methods=["GET"])
@login_required
@bp.arguments(FeedQuery, location="query")
@bp.response(200, FeedItemOut(many=True))
def list_feed(args: dict[str, Any]):
    """A group's live items, newest first, each with the caller's ``has_viewed``."""
    # Assembled from cached JSON (no per-item dump); FeedItemOut stays the contract.
    return Response(ops.list_page(state(), g.user, args["group"], args["limit"],
                                  args["before"]), mimetype="application/json")


@bp.route("/api/v1/messaging/feed/<id:item_id>/", methods=["DELETE"])
@login_required
@bp.response(204)
def delete_item(item_id: int):
    """Soft delete (author or admin): gone from feeds and from every unread count."""
    ops.delete_item(state(), g.user, item_id)
    return Response(status=204)


@bp.route("/api/v1/messaging/feed/<id:item_id>/mark-viewed/", methods=["POST"])
@login_required
@bp.response(200, MarkViewedOut)
def mark_viewed(item_id: int):
    """Idempotent: repeat calls keep the first ``viewed_at``."""
    return {"detail": "Marked as viewed", "viewed_at": ops.mark_viewed(state(), g.user, item_id)}


@bp.route("/api/v1/messaging/feed/<id:item_id>/mark-viewed/", methods=["DELETE"])
@login_required
@bp.response(200, DetailOut)
def mark_unread(item_id: int):
    ops.mark_unread(state(), g.user, item_id)
    return {"detail": "Marked as unread"}


@bp.route("/api/v1/messaging/feed/mark-all-viewed/", methods=["POST"])
@login_required
@bp.arguments(GroupQuery, location="query")
@bp.response(200, MarkAllOut)
def mark_all_viewed(args: dict[str, Any]):
    """One SQL statement in Postgres, O(1) in Redis (a watermark)."""
    count = ops.mark_all_viewed(state(), g.user, args["group"])
    return {"detail": f"Marked {count} items as viewed", "count": count}


@bp.route("/api/v1/messaging/feed/unread-count/", methods=["GET"])
@login_required
@bp.arguments(UnreadQuery, location="query")
@bp.response(200, UnreadOut)
def unread_count(args: dict[str, Any]):
    """With ``group``: that group's count; without: per group over the caller's groups."""
    # Built as UnreadOut dumps it (group ids as strings), without the dump.
    group_id = args["group"]
    if group_id is None:
        counts = ops.unread_counts(state(), g.user)
        return json_response({"groups": {str(k): v for k, v in counts.items()},
                              "total": sum(counts.values())})
    return json_response({"group": group_id,
                          "unread_count": ops.group_unread(state(), g.user, group_id)})


@bp.route("/api/v1/messaging/feed/<id:item_id>/views/", methods=["GET"])
@login_required
@bp.arguments(ViewsQuery, location="query")
@bp.response(200, ViewsOut)
def item_views(args: dict[str, Any], item_id: int):
    """Who viewed an item (author or admin), most recent first, cursor-paginated."""
    page = ops.item_viewers(state(), g.user, item_id, args["limit"], args["cursor"])
    return {"count": page.count, "viewers": page.viewers, "next_cursor": page.next_cursor}
