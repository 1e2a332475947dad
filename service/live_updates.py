"""API section 6 on the web: stream tickets, and the demo page of a live unread badge.

The stream itself is served by the ``stream`` process (``service/stream_server.py``, on
``STREAM_PORT``); ``GET /api/v1/stream`` here only redirects (307) there, so a client that
knows the API's address finds it. In production a proxy routes that path to the stream.
"""

from __future__ import annotations

from importlib import resources

from flask import Flask, Response, g, redirect, request
from flask_smorest import Blueprint
from marshmallow import Schema, fields

from cache import live_events
from cache.client import CacheUnavailable
from service.auth import Caller, login_required
from service.errors import NotFound, ServiceUnavailable
from service.state import state

bp = Blueprint("live_updates", __name__, description="Live updates (server-sent events)")


class TicketOut(Schema):
    ticket = fields.String(required=True)
    expires_in = fields.Integer(required=True, metadata={"description": "seconds"})


@bp.route("/api/v1/stream/ticket", methods=["POST"])
@login_required
@bp.response(201, TicketOut)
def ticket():
    """A single-use ticket, valid 60 s, that opens the caller's event stream
    (``GET /api/v1/stream?ticket=...``): browsers' ``EventSource`` cannot send headers."""
    caller: Caller = g.user
    try:
        value = live_events.issue_ticket(state().cache, caller.id)
    except CacheUnavailable as exc:
        raise ServiceUnavailable("Live updates are unavailable", code="stream_unavailable"
                                 ) from exc
    return {"ticket": value, "expires_in": live_events.TICKET_TTL}


RESUME = ("The id of the last event the client saw: the stream replays what it missed "
          "(up to 500 events or 10 minutes), else starts with a reset event.")
STREAM_PARAMETERS = [
    {"name": "ticket", "in": "query", "required": False, "schema": {"type": "string"},
     "description": "A ticket from POST /api/v1/stream/ticket (single use, 60 s); or send "
                    "an Authorization: Bearer header instead."},
    {"name": "last_event_id", "in": "query", "required": False, "schema": {"type": "string"},
     "description": RESUME + " The query form of the Last-Event-ID header, for a client "
                    "that reconnects with a new ticket (a new EventSource cannot set "
                    "headers). The header wins when both are given."},
    {"name": "Last-Event-ID", "in": "header", "required": False,
     "schema": {"type": "string"}, "description": RESUME},
]


@bp.route("/api/v1/stream", methods=["GET"])
@bp.response(307, description="to the stream process")
@bp.doc(parameters=STREAM_PARAMETERS)
def stream():
    """The caller's event stream (server-sent events)

    Served by the ``stream`` process (``text/event-stream``): this redirects there,
    keeping the query. Events: ``unread`` ``{"group", "unread_count"}``, ``activity``
    ``{"unread_count"[, "item"]}``, ``reset`` ``{}``, each with an ``id:``; a ``: ping``
    comment every 15 s. A bad, used or expired ticket is a JSON ``401``. To resume, send
    the last id seen as ``Last-Event-ID`` or ``last_event_id``."""
    target = state().settings.stream_url
    query = request.query_string.decode()
    return redirect(f"{target}?{query}" if query else target, code=307)


def demo_unread() -> Response:
    """The demo page: one badge, kept live by ``EventSource`` (``DEMO_PAGES=true``)."""
    settings = state().settings
    if not settings.demo_pages:
        raise NotFound("Not found", code="not_found")
    page = resources.files("service").joinpath("demo_unread.html").read_text()
    page = page.replace("__STREAM_URL__", settings.stream_url)
    return Response(page, mimetype="text/html")


def init_app(app: Flask) -> None:
    """The demo page is a plain route: it is not part of the API (nor of its OpenAPI)."""
    app.add_url_rule("/demo/unread", "demo_unread", demo_unread)
