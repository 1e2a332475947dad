"""API section 2, the user activity feed (read / unread): events in, a per-user feed out.

Handlers are thin: schemas validate (every bad input is a 400 in the API.md format),
``service.activity_feed_ops`` does the work. Documented caps: ``activity_ids`` up to
``MAX_MARK_READ_IDS`` per mark-read, ``user_ids`` up to ``MAX_FANOUT_USERS`` per fan-out,
``page_size`` up to 100, ``data`` up to ``MAX_DATA_BYTES`` of JSON.
Operator commands (``init_cli``): cleanup-activity-feeds, archive-activity-feeds,
populate-activity-feeds.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

import click
import orjson
from flask import Flask, g, request
from marshmallow import EXCLUDE, Schema, ValidationError, fields, validate, validates_schema
from redis.exceptions import RedisError

from service import activity_feed_ops as ops
from service.api import Blueprint, json_response
from service.auth import admin_required, login_required
from service.errors import NotFound, ServiceUnavailable
from service.fields import MAX_ID, CappedList, Id, IsoDateTime, StrictBoolean, UtcDateTime
from service.state import state
from storage.activity_feed import ACTIVITY_TYPES, PageQuery
from storage.times import isoformat

bp = Blueprint("activity_feed", __name__, description="User activity feed (read / unread)")

DISPLAY_NAMES = {
    "event": "Event",
    "fast_start": "Fast Started",
    "fast_join": "Joined Fast",
    "fast_leave": "Left Fast",
    "devotional_available": "Devotional Available",
    "milestone": "Milestone Reached",
    "fast_reminder": "Fast Reminder",
    "devotional_reminder": "Devotional Reminder",
}
MAX_PAGE_SIZE = 100
MAX_DATA_BYTES = 8 * 1024
MAX_DAYS_BACK = 3650
# archive-activity-feeds without --older-than-days: the source document's
# ``archive_old_items(archive_older_than_days=365)``.
DEFAULT_ARCHIVE_DAYS = 365


# --- display -------------------------------------------------------------------------------


def age_display(created_at: str, now: datetime | None = None) -> str:
    """``just now``, ``5m ago``, ``2h ago``, ``3d ago``, ``2w ago``, ``4mo ago``, ``1y ago``."""
    delta = (now or datetime.now(UTC)) - datetime.fromisoformat(created_at)
    days = delta.days  # whole days; negative for a time ahead of ``now`` (clock skew)
    if days >= 7:
        if days < 30:
            return f"{days // 7}w ago"
        if days < 365:
            return f"{days // 30}mo ago"
        return f"{days // 365}y ago"
    if days >= 1:
        return f"{days}d ago"
    seconds = delta.seconds if days == 0 else 0
    if seconds < 60:
        return "just now"
    if seconds < 3600:
        return f"{seconds // 60}m ago"
    return f"{seconds // 3600}h ago"


def present(item: dict[str, Any], now: datetime) -> dict[str, Any]:
    """``item`` with its display fields added (in place: callers pass items they own)."""
    item["activity_type_display"] = DISPLAY_NAMES.get(item["activity_type"],
                                                      item["activity_type"])
    item["age_display"] = age_display(item["created_at"], now)
    return item


# --- schemas -------------------------------------------------------------------------------


def _small_json(value: Any) -> None:
    if len(orjson.dumps(value)) > MAX_DATA_BYTES:
        raise ValidationError(f"At most {MAX_DATA_BYTES} bytes of JSON.")


class _ItemFields(Schema):
    title = fields.String(required=True, validate=validate.Length(1, 300))
    description = fields.String(load_default=None, allow_none=True,
                                validate=validate.Length(max=5000))
    data = fields.Dict(load_default=None, allow_none=True, validate=_small_json)
    target_type = fields.String(load_default=None, allow_none=True,
                                validate=validate.Length(1, 50))
    target_id = Id(load_default=None, allow_none=True)


class EventIn(_ItemFields):
    user_id = Id(required=True)
    event_type = fields.String(
        required=True,
        validate=validate.Regexp(r"^[a-z][a-z0-9_]{0,49}$",
                                 error="Lowercase letters, digits and _, at most 50."),
    )


class EventOut(Schema):
    id = fields.Integer(required=True)
    user_id = fields.Integer()
    event_type = fields.String()
    title = fields.String()
    description = fields.String(allow_none=True)
    data = fields.Dict(allow_none=True)
    target_type = fields.String(allow_none=True)
    target_id = fields.Integer(allow_none=True)
    created_at = UtcDateTime()
    activity_id = fields.Integer(allow_none=True, metadata={
        "description": "The item made from the event; null while a worker makes it."})


class FanoutIn(_ItemFields):
    user_ids = CappedList(Id(), ops.MAX_FANOUT_USERS, required=True)
    activity_type = fields.String(required=True, validate=validate.OneOf(ACTIVITY_TYPES))


class FanoutOut(Schema):
    job_id = fields.String(required=True)
    user_count = fields.Integer(required=True)


class ListQuery(Schema):
    # Its answer depends on the query string alone: remembered per query (service/api.py).
    MEMO_QUERY = True

    class Meta:
        unknown = EXCLUDE

    activity_type = fields.String(validate=validate.OneOf(ACTIVITY_TYPES))
    is_read = fields.Boolean()
    start_date = IsoDateTime()
    end_date = IsoDateTime(end_of_day=True)
    page = fields.Integer(load_default=1, validate=validate.Range(1, 1_000_000))
    page_size = fields.Integer(load_default=20, validate=validate.Range(1, MAX_PAGE_SIZE))

    @validates_schema
    def _range(self, data: dict[str, Any], **kwargs: Any) -> None:
        start, end = data.get("start_date"), data.get("end_date")
        if start and end and start > end:
            raise ValidationError("start_date is after end_date.", "start_date")


class ItemOut(Schema):
    id = fields.Integer(required=True)
    activity_type = fields.String()
    activity_type_display = fields.String()
    title = fields.String()
    description = fields.String(allow_none=True)
    is_read = fields.Boolean()
    read_at = fields.String(allow_none=True)
    created_at = fields.String()
    age_display = fields.String()
    data = fields.Dict(allow_none=True)
    target_type = fields.String(allow_none=True)
    target_id = fields.Integer(allow_none=True)


class ListOut(Schema):
    count = fields.Integer(required=True)
    next = fields.String(allow_none=True)
    previous = fields.String(allow_none=True)
    results = fields.List(fields.Nested(ItemOut), required=True)


class SummaryOut(Schema):
    total_items = fields.Integer(required=True)
    unread_count = fields.Integer(required=True)
    read_count = fields.Integer(required=True)
    activity_types = fields.Dict(keys=fields.String(), values=fields.Integer())
    recent_activity = fields.List(fields.Nested(ItemOut))


class MarkReadIn(Schema):
    activity_ids = CappedList(Id(), ops.MAX_MARK_READ_IDS)
    mark_all = StrictBoolean()

    @validates_schema
    def _one_of(self, data: dict[str, Any], **kwargs: Any) -> None:
        has_ids, mark_all = "activity_ids" in data, data.get("mark_all", False)
        if has_ids and mark_all:
            raise ValidationError("Give activity_ids or mark_all, not both.", "_schema")
        if not has_ids and not mark_all:
            raise ValidationError("Give activity_ids or mark_all: true.", "_schema")


class MarkReadOut(Schema):
    message = fields.String(required=True)
    updated_count = fields.Integer(required=True)


class GenerateIn(Schema):
    user_id = Id(required=True)
    days_back = fields.Integer(strict=True, load_default=30,
                               validate=validate.Range(1, MAX_DAYS_BACK))


class DateRange(Schema):
    start = fields.String()
    end = fields.String()


class GenerateOut(Schema):
    message = fields.String(required=True)
    created_count = fields.Integer(required=True)
    date_range = fields.Nested(DateRange)


# --- endpoints -----------------------------------------------------------------------------


@bp.route("/api/events/", methods=["POST"])
@admin_required
@bp.arguments(EventIn)
@bp.response(201, EventOut)
def create_event(body):
    """Record an event and create its activity item (on a worker when
    USE_ASYNC_ACTIVITY_FEED=true)."""
    event, activity_id = ops.record_event(state(), body)
    return {**{c: getattr(event, c) for c in EventOut().fields if c != "activity_id"},
            "activity_id": activity_id}


@bp.route("/api/events/activity-feed/items/", methods=["POST"])
@admin_required
@bp.arguments(FanoutIn)
@bp.response(202, FanoutOut)
def fan_out(body):
    """Give one item to many users (up to MAX_FANOUT_USERS), done by workers in chunks."""
    user_ids = list(dict.fromkeys(body.pop("user_ids")))
    try:
        job_id = ops.enqueue_fan_out(state(), user_ids, datetime.now(UTC), body)
    except ops.QueueFull as exc:
        raise ServiceUnavailable(
            f"Too many activity jobs waiting ({exc.depth}), retry later", code="queue_full",
            retry_after=FULL_QUEUE_RETRY_AFTER) from exc
    except RedisError as exc:
        raise ServiceUnavailable("Job queue is unavailable, retry shortly",
                                 code="queue_unavailable") from exc
    return {"job_id": job_id, "user_count": len(user_ids)}


FULL_QUEUE_RETRY_AFTER = 30  # seconds: a full queue drains in tens of seconds, not one


def _page_url(page: int) -> str:
    args = [(k, v) for k, v in request.args.items(multi=True) if k != "page"]
    if page > 1:
        args.append(("page", str(page)))
    # PUBLIC_BASE_URL, never the request's Host (a client-chosen Host would be reflected).
    base = state().settings.public_base_url + request.path
    return base + ("?" + urlencode(args) if args else "")


@bp.route("/api/events/activity-feed/", methods=["GET"])
@login_required
@bp.arguments(ListQuery, location="query")
@bp.response(200, ListOut)
def list_feed(args):
    """The caller's items, newest first. A page past the last is a 404 (code invalid_page)."""
    query = PageQuery(g.user.id, args.get("activity_type"), args.get("is_read"),
                      args.get("start_date"), args.get("end_date"))
    page, size = args["page"], args["page_size"]
    count, items = ops.list_feed(state(), query, page, size)
    if page > 1 and not items:
        raise NotFound("Invalid page.", code="invalid_page")
    now = datetime.now(UTC)
    # Built as ListOut dumps it (items carry ItemOut's fields), without a per-item dump.
    return json_response({
        "count": count,
        "next": _page_url(page + 1) if page * size < count else None,
        "previous": _page_url(page - 1) if page > 1 else None,
        "results": [present(item, now) for item in items],
    })


@bp.route("/api/events/activity-feed/summary/", methods=["GET"])
@login_required
@bp.response(200, SummaryOut)
def summary():
    # Built as SummaryOut dumps it (the cached items carry ItemOut's fields), without the
    # field-by-field dump of every recent item.
    result = ops.summary(state(), g.user.id)
    now = datetime.now(UTC)
    return json_response({
        "total_items": result.counts.total,
        "unread_count": result.counts.unread,
        "read_count": result.counts.total - result.counts.unread,
        "activity_types": result.counts.by_type,
        "recent_activity": [present(item, now) for item in result.recent],
    })


@bp.route("/api/events/activity-feed/mark-read/", methods=["POST"])
@login_required
@bp.arguments(MarkReadIn)
@bp.response(200, MarkReadOut)
def mark_read(body):
    """Only the caller's unread items count; unknown and other users' ids are ignored."""
    ids = None if body.get("mark_all") else body["activity_ids"]
    updated = ops.mark_read(state(), g.user.id, ids)
    return {"message": f"Marked {updated} items as read", "updated_count": updated}


@bp.route("/api/events/activity-feed/generate/", methods=["POST"])
@admin_required
@bp.arguments(GenerateIn)
@bp.response(200, GenerateOut)
def generate(body):
    """Backfill a user's items from recorded events; never twice for one event."""
    report = ops.backfill(state(), [body["user_id"]], body["days_back"])
    return {
        "message": (f"Generated {report.created} activity feed items for user "
                    f"{body['user_id']}"),
        "created_count": report.created,
        "date_range": {"start": isoformat(report.start), "end": isoformat(report.end)},
    }


# --- operator commands ---------------------------------------------------------------------


def init_cli(app: Flask) -> None:
    """Register the retention and backfill commands on ``app.cli``."""

    @app.cli.command("cleanup-activity-feeds")
    @click.option("--dry-run", is_flag=True, help="Only count what would be deleted.")
    @click.option("--activity-type", type=click.Choice(ACTIVITY_TYPES))
    @click.option("--older-than-days", type=click.IntRange(0),
                  help="Override the per-type retention policy.")
    def cleanup_command(dry_run: bool, activity_type: str | None,
                        older_than_days: int | None) -> None:
        """Delete activity items past retention (per-type policy of API.md)."""
        report = ops.cleanup(state(), activity_type, older_than_days, dry_run)
        verb = "Would delete" if dry_run else "Deleted"
        for name, cutoff in report.cutoffs.items():
            click.echo(f"  {name}: {report.deleted.get(name, 0)} older than {isoformat(cutoff)}")
        users = "" if dry_run else f" of {report.users} users"
        click.echo(f"{verb} {report.total} activity items{users}")

    @app.cli.command("archive-activity-feeds")
    @click.option("--older-than-days", type=click.IntRange(1), default=DEFAULT_ARCHIVE_DAYS,
                  show_default=True)
    def archive_command(older_than_days: int) -> None:
        """Move activity items older than N days (default 365) to activities_archive."""
        report = ops.archive(state(), older_than_days)
        click.echo(f"Archived {report.moved} activity items of {report.users} users "
                   f"created before {isoformat(report.cutoff)}")

    @app.cli.command("populate-activity-feeds")
    @click.option("--user-id", type=click.IntRange(1, MAX_ID))
    @click.option("--days-back", type=click.IntRange(1, MAX_DAYS_BACK), default=30,
                  show_default=True)
    @click.option("--dry-run", is_flag=True, help="Only count what would be created.")
    def populate_command(user_id: int | None, days_back: int, dry_run: bool) -> None:
        """Create missing activity items from recorded events (never twice per event)."""
        report = ops.backfill(state(), None if user_id is None else [user_id], days_back,
                              dry_run)
        verb = "Would create" if dry_run else "Created"
        users = "" if dry_run else f" for {report.users} users"
        click.echo(f"{verb} {report.created} activity items{users} from events between "
                   f"{isoformat(report.start)} and {isoformat(report.end)}")
