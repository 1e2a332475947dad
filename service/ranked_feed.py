"""API section 4: the personalized ranked feed, hearts, praise, trophies, fellows,
collective membership and feed preferences: the HTTP schemas and routes. Routes parse,
call a use case of ``service.ranked_feed_ops`` (plain functions of ``AppState``) and
render.

``GET /api/posts/`` ranks a bounded candidate set (``storage.ranked_feed``) with the score
of ``service.ranked_feed_score`` and serves pages from the per-viewer cached ranking of
``cache.ranked_feed``. Every write below that changes one of a viewer's ranking inputs
bumps that viewer's calc version in its own transaction, so their next page is computed
afresh. Other people's activity (new posts, their likes and comments) reaches a viewer's
ranking when its page cache expires (``PAGE_CACHE_TTL``, 5 minutes) or on
``invalidate_cache=true``; deleted posts, blocked authors, muted collectives and
collectives the viewer is not in (admins see them all) are filtered out of every page,
cached or not. A join or leave bumps the viewer's calc version, so it shows at once.

A personalized walk is bounded by the candidate set: ``count`` is its size (at most
``RANKED_CANDIDATES_RECENT + 2 · RANKED_CANDIDATES_SOCIAL``, 1,000 by default), the page
holding its last post has ``next: null`` and a page past it is empty (200, never a 404).

An admin's ranking controls (``/api/admin/ranking/``: on/off and weights over
``RANKING_WEIGHTS``) live in Postgres; their version keys every cached ranking and is
read with the viewer's calc version in one round trip (``cache.ranked_feed``), so a change
is in force at every process's next page. Switched off, every caller gets the
chronological order. ``RANKING_LOG_SAMPLE`` of the ranked pages are logged as one JSON
line on ``service.ranking`` (viewer, page, weights, the top posts and their components).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from urllib.parse import urlencode

import orjson
from flask import Response, g, request
from flask.views import MethodView
from marshmallow import EXCLUDE, Schema, fields, validate

from service import ranked_feed_ops as ops
from service import ranked_feed_score as scoring
from service.api import Blueprint
from service.auth import admin_required, login_optional, login_required
from service.errors import NotFound
from service.fields import Id
from service.schemas import TOGGLE_CHANGED, PostFieldsOut
from service.state import state

bp = Blueprint("ranked_feed", __name__, description="Personalized ranked feed (section 4)")

MAX_PAGE = 100_000
MAX_WEIGHT = 1_000_000.0  # far above any useful weight; keeps every score finite


def now() -> datetime:
    """The ranking clock of the routes (tests freeze it, or ``ranked_feed_ops.now``)."""
    return ops.now()


# --- schemas -------------------------------------------------------------------------------


class RankedFeedQuery(Schema):
    MEMO_QUERY = True  # its answer depends on the query string alone (service/api.py)

    class Meta:
        unknown = EXCLUDE

    page = fields.Integer(load_default=1, validate=validate.Range(1, MAX_PAGE))
    page_size = fields.Integer(load_default=20, validate=validate.Range(1, 50))
    ordering = fields.String(
        load_default=None, validate=validate.OneOf(["personalized", "chronological"]),
        metadata={"description": "personalized (default when signed in) or chronological "
                                 "(always for anonymous callers)"},
    )
    invalidate_cache = fields.Boolean(
        load_default=False, metadata={"description": "recompute the ranking now"})
    explain = fields.Boolean(
        load_default=False, metadata={"description": "add score_components to each post"})


class RankedPostOut(PostFieldsOut):
    praise_count = fields.Integer()
    trophy_count = fields.Integer()
    score = fields.Float(allow_none=True,
                         metadata={"description": "personalized score; null when chronological"})
    score_components = fields.Dict(
        allow_none=True,
        metadata={"description": "with explain=true: the raw components (recency, social, "
                                 "interaction, engagement, collective, post_type), viewed "
                                 "and viewed_factor; score = Σ weight·component × "
                                 "viewed_factor; null when chronological"})


class RankedPageOut(Schema):
    count = fields.Integer(metadata={"description": (
        "personalized: the size of the ranked candidate set, the walk's bound (at most "
        "RANKED_CANDIDATES_RECENT + 2·RANKED_CANDIDATES_SOCIAL posts, 1,000 by default); "
        "chronological: every post the caller may see")})
    next = fields.String(allow_none=True, metadata={"description": (
        "the next page; null on the page holding the last post (a personalized page past "
        "it is empty, never a 404)")})
    previous = fields.String(allow_none=True)
    results = fields.List(fields.Nested(RankedPostOut))


class HeartOut(Schema):
    hearted = fields.Boolean(required=True, metadata={"description": TOGGLE_CHANGED})


class PraiseTrophyOut(Schema):
    added = fields.Boolean(required=True, metadata={"description": TOGGLE_CHANGED})


class FellowOut(Schema):
    fellow = fields.Boolean(required=True, metadata={"description": TOGGLE_CHANGED})


class CollectiveMemberOut(Schema):
    member = fields.Boolean(required=True, metadata={"description": TOGGLE_CHANGED})


MAX_PREFERENCE_ENTRIES = 100  # API.md: each list at most 100 entries


class PreferencesIn(Schema):
    """Fields left out keep their stored value; lists are stored deduplicated and sorted.
    ``preferred_artist_types`` is stored and returned (seed 003's UserPreference); no
    score component uses it yet."""

    preferred_post_types = fields.List(
        fields.String(validate=validate.Length(1, 50)),
        validate=validate.Length(max=MAX_PREFERENCE_ENTRIES))
    preferred_artist_types = fields.List(
        fields.String(validate=validate.Length(1, 50)),
        validate=validate.Length(max=MAX_PREFERENCE_ENTRIES))
    muted_collectives = fields.List(Id(), validate=validate.Length(max=MAX_PREFERENCE_ENTRIES))
    blocked_users = fields.List(Id(), validate=validate.Length(max=MAX_PREFERENCE_ENTRIES))


class PreferencesOut(Schema):
    preferred_post_types = fields.List(fields.String(), required=True)
    preferred_artist_types = fields.List(fields.String(), required=True)
    muted_collectives = fields.List(fields.Integer(), required=True)
    blocked_users = fields.List(fields.Integer(), required=True)


def _weight(name: str) -> fields.Float:
    return fields.Float(validate=validate.Range(0, MAX_WEIGHT), allow_nan=False,
                        metadata={"description": f"weight of the {name} component"})


class WeightsIn(Schema):
    """Weights left out keep their current value."""

    recency = _weight("recency")
    social = _weight("social")
    interaction = _weight("interaction")
    engagement = _weight("engagement")
    collective = _weight("collective")
    post_type = _weight("post_type")


class RankingIn(Schema):
    enabled = fields.Boolean(
        metadata={"description": "false: every caller gets the chronological order"})
    weights = fields.Nested(WeightsIn)


class WeightsOut(Schema):
    recency = fields.Float(required=True)
    social = fields.Float(required=True)
    interaction = fields.Float(required=True)
    engagement = fields.Float(required=True)
    collective = fields.Float(required=True)
    post_type = fields.Float(required=True)


class RankingOut(Schema):
    enabled = fields.Boolean(required=True)
    weights = fields.Nested(WeightsOut, required=True)


# --- the feed ------------------------------------------------------------------------------


def _render(page: ops.FeedPage, explain: bool) -> bytes:
    """The page's results assembled from the posts' cached bytes (no schema dump per
    post; ``RankedPostOut`` stays the contract)."""
    results = []
    for post, entry in page.posts:
        tail = b',"score":' + (b"null" if entry is None else orjson.dumps(entry.score))
        if explain:
            tail += b',"score_components":' + (b"null" if entry is None else orjson.dumps(
                scoring.Ranked(entry.id, entry.score, entry.components,
                               entry.viewed).explain()))
        results.append(post.ranked_json(tail))
    return b"[" + b",".join(results) + b"]"


def _page_url(page: int | None) -> str | None:
    if page is None:
        return None
    args = {k: v for k, v in request.args.items() if k not in {"page", "invalidate_cache"}}
    args["page"] = str(page)
    # PUBLIC_BASE_URL, never the request's Host (a client-chosen Host would be reflected).
    return f"{state().settings.public_base_url}{request.path}?{urlencode(args)}"


@bp.route("/api/posts/", methods=["GET"])
@login_optional
@bp.arguments(RankedFeedQuery, location="query")
@bp.response(200, RankedPageOut)
def list_posts(args):
    """Posts ranked for the caller (personalized) or newest first (chronological).

    Page-number pagination. A personalized ranking covers a bounded candidate set (the
    newest RANKED_CANDIDATES_RECENT posts plus up to RANKED_CANDIDATES_SOCIAL newest posts
    by fellows and as many from joined collectives: at most 1,000 posts by default);
    ``count`` is its size, the page holding its last post has ``next: null`` and a page
    past it has no results (200: a walk never ends in a 404). Posts the caller already
    viewed score half. A chronological page past the last one is a 404.
    """
    user = g.user
    ordering = args["ordering"] or ("personalized" if user else "chronological")
    page, size = args["page"], args["page_size"]
    if user is None or ordering == "chronological":
        feed = ops.chronological_page(state(), user.id if user else None, page, size,
                                      bool(user and user.is_admin))
    else:
        feed = ops.personalized_page(state(), user.id, page, size,
                                     force=args["invalidate_cache"], is_admin=user.is_admin,
                                     clock=now())
    if not feed.personalized and page > 1 and (page - 1) * size >= feed.count:
        raise NotFound("Invalid page", code="invalid_page")
    head = orjson.dumps({
        "count": feed.count,
        "next": _page_url(page + 1 if page * size < feed.count else None),
        "previous": _page_url(max(1, min(page - 1, -(-feed.count // size)))
                              if page > 1 else None),
    })
    # A Response: flask-smorest passes it through unserialised.
    return Response(head[:-1] + b',"results":' + _render(feed, args["explain"]) + b"}",
                    mimetype="application/json")


# --- the viewer's writes -------------------------------------------------------------------


@bp.route("/api/posts/<id:post_id>/heart/")
class Heart(MethodView):
    """A heart is a community like (same row, same counter). Both methods answer whether
    this call changed anything: ``{"hearted": true}`` when POST added the heart or DELETE
    removed it, ``false`` on a repeat."""

    @login_required
    @bp.response(200, HeartOut)
    def post(self, post_id: int):
        return {"hearted": _set_heart(g.user.id, post_id, True, g.user.is_admin)}

    @login_required
    @bp.response(200, HeartOut)
    def delete(self, post_id: int):
        return {"hearted": _set_heart(g.user.id, post_id, False, g.user.is_admin)}


def _set_heart(user_id: int, post_id: int, hearted: bool, is_admin: bool = False) -> bool:
    return ops.heart(state(), user_id, post_id, hearted, is_admin)


@bp.route("/api/posts/<id:post_id>/praise/", methods=["POST"])
@login_required
@bp.response(200, PraiseTrophyOut)
def praise(post_id: int):
    """Praise a post (once per user; ``added`` is false if already praised)."""
    return {"added": ops.praise(state(), g.user.id, post_id, g.user.is_admin)}


@bp.route("/api/posts/<id:post_id>/trophy/", methods=["POST"])
@login_required
@bp.response(200, PraiseTrophyOut)
def trophy(post_id: int):
    """Give a post a trophy (once per user; ``added`` is false if already given)."""
    return {"added": ops.trophy(state(), g.user.id, post_id, g.user.is_admin)}


@bp.route("/api/fellows/<id:user_id>/")
class Fellows(MethodView):
    """Fellowship is mutual: both rows are written or removed, both users' feeds change.
    ``{"fellow": true}`` when this call made (POST) or ended (DELETE) the fellowship,
    ``false`` on a repeat."""

    @login_required
    @bp.response(200, FellowOut)
    def post(self, user_id: int):
        return {"fellow": _set_fellow(g.user.id, user_id, True)}

    @login_required
    @bp.response(200, FellowOut)
    def delete(self, user_id: int):
        return {"fellow": _set_fellow(g.user.id, user_id, False)}


def _set_fellow(me: int, other: int, fellow: bool) -> bool:
    return ops.set_fellow(state(), me, other, fellow)


@bp.route("/api/collectives/<id:collective_id>/join/")
class Join(MethodView):
    """``{"member": true}`` when this call joined (POST) or left (DELETE) the collective,
    ``false`` on a repeat."""

    @login_required
    @bp.response(200, CollectiveMemberOut)
    def post(self, collective_id: int):
        return {"member": _set_member(g.user.id, collective_id, True)}

    @login_required
    @bp.response(200, CollectiveMemberOut)
    def delete(self, collective_id: int):
        return {"member": _set_member(g.user.id, collective_id, False)}


def _set_member(user_id: int, collective_id: int, member: bool) -> bool:
    return ops.set_member(state(), user_id, collective_id, member)


@bp.route("/api/user/preferences/")
class Preferences(MethodView):
    @login_required
    @bp.response(200, PreferencesOut)
    def get(self):
        return ops.get_preferences(state(), g.user.id).as_dict()

    @login_required
    @bp.arguments(PreferencesIn)
    @bp.response(200, PreferencesOut)
    def put(self, body: dict[str, list]):
        """Replace the given preference lists (fields left out are kept)."""
        return ops.save_preferences(state(), g.user.id, body).as_dict()


# --- the admin's ranking controls -----------------------------------------------------------


@bp.route("/api/admin/ranking/")
class Ranking(MethodView):
    """Switch personalized ranking off and on, and change its weights, at run time."""

    @admin_required
    @bp.response(200, RankingOut)
    def get(self):
        """The controls in force (weights nobody set follow ``RANKING_WEIGHTS``)."""
        return ops.controls_out(state(), ops.load_controls(state()))

    @admin_required
    @bp.arguments(RankingIn)
    @bp.response(200, RankingOut)
    def put(self, body: dict[str, Any]):
        """Change ``enabled`` and/or some weights (the others are kept). Stored in
        Postgres; every process ranks with it from the caller's next page (no restart, no
        page cached under the old controls is served)."""
        return ops.controls_out(state(), ops.save_controls(
            state(), body.get("enabled"), body.get("weights", {})))
