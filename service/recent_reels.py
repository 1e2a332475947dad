"""API section 5, reels: view tracking (one or a batch), recently viewed, likes.

The legacy reel tracker (a browser script: ``POST /api/reels/<id>/view`` with
``{"view_duration": n}`` and a bearer token, once per reel as the user scrolls away)
works unchanged. Errors keep the legacy ``"error"`` text ("Reel not found", "Reel is not
available") and add our ``"code"``.

Routes and schemas here; the use cases (plain functions of the service's state) are in
``service/recent_reels_ops.py``.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from flask import Response, g
from marshmallow import EXCLUDE, Schema, ValidationError, fields, post_load, validate

from service import recent_reels_ops as ops
from service.api import Blueprint
from service.auth import login_required
from service.errors import ApiError, NotFound
from service.fields import Id, UtcDateTime
from service.recent_reels_ops import (
    REEL_FIELDS,
    Rejection,
    ViewRequest,
)
from service.schemas import TOGGLE_CHANGED, ErrorSchema
from service.state import state
from storage.recent_reels import datetime_to_ms

bp = Blueprint("reels", __name__, description="Reels: view tracking, recently viewed, likes")

# Longer than any reel (the admin endpoint caps durations at a day): a bug, not a watch.
MAX_VIEW_DURATION = 86_400
MAX_BATCH = 100
EARLIEST_VIEW_MS = datetime_to_ms(datetime(2000, 1, 1, tzinfo=UTC))
CLOCK_SKEW_MS = 5 * 60 * 1000  # a client clock this far ahead is still accepted


def now_ms() -> int:
    """The server clock in whole milliseconds (tests replace it)."""
    return time.time_ns() // 1_000_000


# --- schemas --------------------------------------------------------------------------------

_DURATION_ERROR = f"must be an integer from 0 to {MAX_VIEW_DURATION} (seconds)"


def _view_duration() -> fields.Integer:
    return fields.Integer(
        strict=True,
        load_default=None,
        allow_none=True,
        validate=validate.Range(0, MAX_VIEW_DURATION, error=_DURATION_ERROR),
        error_messages={"invalid": _DURATION_ERROR},
        metadata={"description": "Seconds watched; capped at the reel's duration. Left "
                                 "out or null: the last known duration is kept (null on a "
                                 "first view)"},
    )


class ReelViewIn(Schema):
    view_duration = _view_duration()


class ReelBatchViewIn(Schema):
    """One view of a batch, validated on its own (a bad one is rejected, not the batch)."""

    reel_id = Id(required=True)
    view_duration = _view_duration()
    viewed_at = fields.AwareDateTime(
        default_timezone=UTC, load_default=None, allow_none=True,
        metadata={"description": "ISO 8601; default: when the server receives it"},
    )


class ReelViewBatchIn(Schema):
    # Items stay raw here: ``_parse_item`` validates each one with ``ReelBatchViewIn``, so a
    # bad view is listed in ``rejected`` instead of failing the whole batch.
    views = fields.List(
        fields.Raw(metadata={"type": "object", "description":
                             '{"reel_id", "view_duration"?, "viewed_at"?} (see ReelBatchViewIn)'}),
        required=True,
        validate=validate.Length(max=MAX_BATCH),
    )


class ReelViewOut(Schema):
    status = fields.String(required=True)
    message = fields.String(required=True)


class ReelRejectedOut(Schema):
    reel_id = fields.Raw(allow_none=True)
    error = fields.String(required=True)


class ReelBatchOut(Schema):
    status = fields.String(required=True)
    tracked = fields.Integer(required=True)
    rejected = fields.List(fields.Nested(ReelRejectedOut), required=True)


class RecentReelsQuery(Schema):
    # Its answer depends on the query string alone: remembered per query (service/api.py).
    MEMO_QUERY = True

    class Meta:
        unknown = EXCLUDE

    page = fields.Integer(load_default=1, validate=validate.Range(1, 1_000_000))
    per_page = fields.Integer(load_default=20, validate=validate.Range(1, 100))
    fields_ = fields.String(
        data_key="fields", load_default=None,
        metadata={"description": "Comma list of reel fields to return: "
                  + ", ".join(REEL_FIELDS)},
    )

    @post_load
    def parse_fields(self, data: dict[str, Any], **_: Any) -> dict[str, Any]:
        raw = data.pop("fields_")
        if raw is None:
            data["fields"] = REEL_FIELDS
            return data
        names = {part.strip() for part in raw.split(",") if part.strip()}
        unknown = sorted(names - set(REEL_FIELDS))
        if unknown:
            raise ValidationError(
                f"Unknown field(s): {', '.join(unknown)}. Known: {', '.join(REEL_FIELDS)}",
                field_name="fields",
            )
        if not names:
            raise ValidationError("Name at least one field", field_name="fields")
        data["fields"] = tuple(f for f in REEL_FIELDS if f in names)
        return data


class RecentReelOut(Schema):
    reel_id = fields.Integer()
    video_url = fields.String()
    description = fields.String(allow_none=True)
    viewed_at = UtcDateTime()
    view_duration = fields.Integer(
        allow_none=True,
        metadata={"description": "seconds of the last view that sent one (a view without "
                                 "view_duration keeps it); null if none did"})
    likes_count = fields.Integer()
    views_count = fields.Integer()
    is_liked = fields.Boolean()


class ReelPaginationOut(Schema):
    total = fields.Integer(required=True)
    pages = fields.Integer(required=True)
    current_page = fields.Integer(required=True)
    per_page = fields.Integer(required=True)
    has_next = fields.Boolean(required=True)
    has_prev = fields.Boolean(required=True)


class RecentReelsDataOut(Schema):
    reels = fields.List(fields.Nested(RecentReelOut), required=True)
    pagination = fields.Nested(ReelPaginationOut, required=True)


class RecentReelsOut(Schema):
    status = fields.String(required=True)
    data = fields.Nested(RecentReelsDataOut, required=True)


class ReelLikedOut(Schema):
    liked = fields.Boolean(required=True, metadata={"description": TOGGLE_CHANGED})


class ReelUnlikedOut(Schema):
    unliked = fields.Boolean(required=True, metadata={"description": TOGGLE_CHANGED})


def _parse_item(raw: Any, now: int) -> ViewRequest | Rejection:
    """Validate one view of a batch; a bad one becomes a ``Rejection`` naming why."""
    if not isinstance(raw, dict):
        return Rejection(None, "each view must be a JSON object")
    raw_id = raw.get("reel_id")
    # Echo the client's reel_id when it is printable as given (a JSON integer beyond 64
    # bits would not encode; a long string is no id), else null.
    printable_int = isinstance(raw_id, int) and not isinstance(raw_id, bool) and (
        abs(raw_id) < 2**63)
    printable_str = isinstance(raw_id, str) and len(raw_id) <= 40
    echo = raw_id if printable_int or printable_str else None
    try:
        item = ReelBatchViewIn().load(raw)
    except ValidationError as exc:
        messages = exc.normalized_messages()
        text = "; ".join(
            f"{name}: {' '.join(map(str, m)) if isinstance(m, list) else m}"
            for name, m in sorted(messages.items())
        )
        return Rejection(echo, text)
    viewed_at_ms = now if item["viewed_at"] is None else datetime_to_ms(item["viewed_at"])
    if viewed_at_ms < EARLIEST_VIEW_MS:
        return Rejection(echo, "viewed_at: must not be before 2000-01-01")
    if viewed_at_ms > now + CLOCK_SKEW_MS:
        return Rejection(echo, "viewed_at: must not be in the future")
    return ViewRequest(item["reel_id"], item["view_duration"], viewed_at_ms)


# --- routes ---------------------------------------------------------------------------------


@bp.route("/api/reels/<id:reel_id>/view", methods=["POST"])
@login_required
@bp.arguments(ReelViewIn)
@bp.response(200, ReelViewOut)
@bp.alt_response(400, schema=ErrorSchema, description="Invalid body or reel not available")
@bp.alt_response(404, schema=ErrorSchema, description="Reel not found")
def track_view(body: dict, reel_id: int):
    """Track one view of a reel: moves it to the top of the caller's recently viewed."""
    _, rejected = ops.track_views(state(), g.user.id,
                                  [ViewRequest(reel_id, body["view_duration"], now_ms())])
    if rejected:
        refusal = rejected[0]
        if refusal.status == 404:
            raise NotFound(refusal.error)
        raise ApiError(refusal.error, code="reel_not_available")
    return {"status": "success", "message": "View tracked successfully"}


@bp.route("/api/reels/views", methods=["POST"])
@login_required
@bp.arguments(ReelViewBatchIn)
@bp.response(200, ReelBatchOut)
@bp.alt_response(400, schema=ErrorSchema, description="Body is not {\"views\": [...<=100]}")
def track_view_batch(body: dict):
    """Track up to 100 views at once; each is validated on its own, bad ones are listed in
    ``rejected``. An older ``viewed_at`` never overtakes a newer view of the same reel."""
    now = now_ms()
    parsed = [_parse_item(raw, now) for raw in body["views"]]
    requests = [p for p in parsed if isinstance(p, ViewRequest)]
    tracked, refused = ops.track_views(state(), g.user.id, requests) if requests else (0, {})
    refused_at = iter(refused.get(i) for i in range(len(requests)))
    # In request order: a valid item takes its verdict from track_views, if any.
    verdicts = [p if isinstance(p, Rejection) else next(refused_at) for p in parsed]
    return {
        "status": "success",
        "tracked": tracked,
        "rejected": [{"reel_id": r.reel_id, "error": r.error} for r in verdicts if r],
    }


@bp.route("/api/reels/recently-viewed", methods=["GET"])
@login_required
@bp.arguments(RecentReelsQuery, location="query")
@bp.response(200, RecentReelsOut)
@bp.alt_response(400, schema=ErrorSchema, description="Bad page, per_page or fields")
def recently_viewed(query: dict):
    """The caller's recently viewed reels, most recent first (at most
    MAX_RECENT_REEL_VIEWS, default 50)."""
    # Assembled from cached JSON (no per-reel dump); RecentReelsOut stays the contract.
    return Response(ops.recent_page(state(), g.user.id, query["page"], query["per_page"],
                                    query["fields"]), mimetype="application/json")


@bp.route("/api/reels/<id:reel_id>/like", methods=["POST"])
@login_required
@bp.response(200, ReelLikedOut)
@bp.alt_response(400, schema=ErrorSchema, description="Reel not available")
@bp.alt_response(404, schema=ErrorSchema, description="Reel not found")
def like_reel(reel_id: int):
    """Like a reel: ``{"liked": true}`` if this call added the like, ``false`` if the
    caller already liked it (the count moves once)."""
    return {"liked": ops.like(state(), g.user.id, reel_id)}


@bp.route("/api/reels/<id:reel_id>/like", methods=["DELETE"])
@login_required
@bp.response(200, ReelUnlikedOut)
@bp.alt_response(404, schema=ErrorSchema, description="Reel not found")
def unlike_reel(reel_id: int):
    """Remove the caller's like: ``{"unliked": true}`` if this call removed it, ``false``
    if there was none."""
    return {"unliked": ops.unlike(state(), g.user.id, reel_id)}
