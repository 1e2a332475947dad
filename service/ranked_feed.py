"""API section 4: the personalized ranked feed, hearts, praise, trophies, fellows,
collective membership and feed preferences.

``GET /api/posts/`` ranks a bounded candidate set (``storage.ranked_feed``) with the score
of ``service.ranked_feed_score`` and serves pages from the per-viewer cached ranking of
``cache.ranked_feed``. Every write below that changes one of a viewer's ranking inputs
bumps that viewer's calc version in its own transaction, so their next page is computed
afresh. Other people's activity (new posts, their likes and comments) reaches a viewer's
ranking when its page cache expires (``PAGE_CACHE_TTL``, 5 minutes) or on
``invalidate_cache=true``; deleted posts, blocked authors, muted collectives and
collectives the viewer is not in (admins see them all) are filtered out of every page,
cached or not. A join or leave bumps the viewer's calc version, so it shows at once.

An admin's ranking controls (``/api/admin/ranking/``: on/off and weights over
``RANKING_WEIGHTS``) live in Postgres; their version keys every cached ranking and is
read with the viewer's calc version in one round trip (``cache.ranked_feed``), so a change
is in force at every process's next page. Switched off, every caller gets the
chronological order. ``RANKING_LOG_SAMPLE`` of the ranked pages are logged as one JSON
line on ``service.ranking`` (viewer, page, weights, the top posts and their components).
"""

from __future__ import annotations

import json
import logging
import random
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from flask import g, jsonify, request
from flask.views import MethodView
from marshmallow import EXCLUDE, Schema, fields, validate

from cache.ranked_feed import (
    Controls,
    Entry,
    RankedFeedCache,
    RankedPage,
    config_scope,
    controls_changed,
    touch,
)
from service import ranked_feed_score as scoring
from service.api import Blueprint
from service.auth import admin_required, login_optional, login_required
from service.errors import ApiError, NotFound
from service.fields import Id, isoformat
from service.posts_service import like_post, set_membership
from service.schemas import TOGGLE_CHANGED, PostFieldsOut
from service.state import state
from storage import ranked_feed as store
from storage.profiles import author_json

bp = Blueprint("ranked_feed", __name__, description="Personalized ranked feed (section 4)")

MAX_PAGE = 100_000
MAX_WEIGHT = 1_000_000.0  # far above any useful weight; keeps every score finite
DECISION_LOG_TOP = 10  # posts per sampled ranking-decision log line
decisions = logging.getLogger("service.ranking")


def now() -> datetime:
    """The ranking clock (tests freeze it)."""
    return datetime.now(UTC)


# --- schemas -------------------------------------------------------------------------------


class RankedFeedQuery(Schema):
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
    count = fields.Integer()
    next = fields.String(allow_none=True)
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


# --- ranking -------------------------------------------------------------------------------


def _feed_cache() -> RankedFeedCache:
    app_state = state()
    s = app_state.settings
    return RankedFeedCache(
        app_state.cache, app_state.filler, s.page_cache_ttl,
        {"fellows": s.fellows_ttl, "colls": s.collectives_ttl,
         "stats": s.interaction_stats_ttl},
    )


def _stats_json(user_stats: tuple[dict[int, int], dict[str, int]]) -> dict[str, Any]:
    by_author, by_type = user_stats
    return {"a": sorted(by_author.items()), "t": by_type}


def load_controls() -> Controls:
    """The ranking controls from Postgres (the truth)."""
    with state().db.session() as session:
        stored = store.load_ranking_controls(session, config_scope().row_name)
    return Controls(stored.version, stored.enabled, stored.weights)


def weights_of(controls: Controls) -> dict[str, float]:
    """``RANKING_WEIGHTS`` with the admin's weights over it."""
    return {**state().settings.ranking_weights, **controls.weights}


def compute_ranking(user_id: int, version: int | None,
                    weights: dict[str, float] | None = None,
                    is_admin: bool = False) -> list[Entry]:
    """Rank the viewer's candidates from Postgres with ``weights`` (default
    ``RANKING_WEIGHTS``); inputs from the cache at ``version`` (or straight from Postgres
    when ``version`` is None). Candidates are the posts the viewer may see: public ones
    and their collectives' (every post for an admin)."""
    app_state = state()
    settings = app_state.settings
    with app_state.db.session() as session:
        store.begin_ranking(session)
        loaders = {
            "fellows": lambda: store.load_fellows(session, user_id),
            "colls": lambda: store.load_collectives(session, user_id),
            "stats": lambda: _stats_json(store.load_interaction_stats(session, user_id)),
        }
        if version is None:
            inputs = {name: load() for name, load in loaders.items()}
        else:
            inputs = _feed_cache().inputs(user_id, version, loaders)
        prefs = store.load_preferences(session, user_id)
        rows = store.load_candidates(
            session, fellows=inputs["fellows"], collectives=inputs["colls"],
            blocked=prefs.blocked_users, muted=prefs.muted_collectives,
            k_recent=settings.ranked_candidates_recent,
            k_social=settings.ranked_candidates_social, is_admin=is_admin,
        )
        viewed = store.load_viewed(session, user_id, [row["id"] for row in rows])
    viewer = scoring.ViewerInputs(
        fellows=frozenset(inputs["fellows"]),
        collectives=frozenset(inputs["colls"]),
        by_author={int(a): int(n) for a, n in inputs["stats"]["a"]},
        by_type={str(t): int(n) for t, n in inputs["stats"]["t"].items()},
        preferred_types=frozenset(prefs.preferred_post_types),
        viewed=frozenset(viewed),
    )
    candidates = [scoring.Candidate(**row) for row in rows]
    ranked = scoring.rank(candidates, viewer, weights or settings.ranking_weights, now())
    return [Entry(r.id, r.score, r.components, r.viewed) for r in ranked]


# --- the feed ------------------------------------------------------------------------------


def _post_out(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "user_id": row["author_id"],
        "author_id": row["author_id"],
        "author": author_json(row["author_id"], row["author_display_name"],
                              row["author_avatar_url"], row["author_tier"]),
        "title": row["title"],
        "description": row["description"],
        "tags": list(row["tags"] or []),
        "post_type": row["post_type"],
        "asset_type": row["asset_type"],
        "asset_url": row["asset_url"],
        "collective_id": row["collective_id"],
        "show_prompt": row["show_prompt"],
        "prompt": row["prompt"] if row["show_prompt"] else None,  # hidden: never leaves
        "is_featured": row["is_featured"],
        "inspired_by_post_id": row["inspired_by_post_id"],
        "like_count": row["like_count"],
        "comment_count": row["comment_count"],
        "view_count": row["view_count"],
        "praise_count": row["praise_count"],
        "trophy_count": row["trophy_count"],
        "created_at": isoformat(row["created_at"]),
        "updated_at": isoformat(row["updated_at"]),
    }


def _page_url(page: int | None) -> str | None:
    if page is None:
        return None
    args = {k: v for k, v in request.args.items() if k not in {"page", "invalidate_cache"}}
    args["page"] = str(page)
    # PUBLIC_BASE_URL, never the request's Host (a client-chosen Host would be reflected).
    return f"{state().settings.public_base_url}{request.path}?{urlencode(args)}"


def ranked_page(user_id: int, start: int, stop: int, force: bool = False,
                is_admin: bool = False) -> tuple[Controls, RankedPage | None]:
    """The ranking controls and entries ``[start, stop)`` of the viewer's ranking under
    them (None when the admin switched ranking off); an admin's ranking (every collective)
    is kept apart. Warm: one round trip for the versions, one for the page."""
    feed_cache = _feed_cache()
    version, controls = feed_cache.versions(user_id, load_controls)
    if not controls.enabled:
        return controls, None
    weights = weights_of(controls)
    return controls, feed_cache.page(
        user_id, version, controls.version, start, stop,
        lambda v: compute_ranking(user_id, v, weights, is_admin), force=force, admin=is_admin,
    )


def _log_decision(user_id: int, args: dict[str, Any], count: int, controls: Controls,
                  shown: list[tuple[dict[str, Any], Entry]]) -> None:
    """One JSON line: the viewer, the page and its top posts with their components."""
    top = [{"id": post["id"], "score": post["score"],
            "components": dict(zip(scoring.COMPONENTS, entry.components, strict=True)),
            "viewed": entry.viewed}
           for post, entry in shown[:DECISION_LOG_TOP]]
    decisions.info(json.dumps({
        "event": "ranking_decision", "viewer": user_id, "page": args["page"],
        "page_size": args["page_size"], "count": count,
        "config_version": controls.version, "weights": weights_of(controls), "top": top,
    }))


def _personalized(user_id: int, args: dict[str, Any], is_admin: bool = False
                  ) -> tuple[int, list[dict[str, Any]]]:
    start = (args["page"] - 1) * args["page_size"]
    controls, ranked = ranked_page(user_id, start, start + args["page_size"],
                                   force=args["invalidate_cache"], is_admin=is_admin)
    if ranked is None:
        return _chronological(user_id, args, is_admin)
    with state().db.session() as session:
        rows = store.visible_posts(session, user_id, [e.id for e in ranked.entries],
                                   is_admin)
    results = []
    shown: list[tuple[dict[str, Any], Entry]] = []
    for entry in ranked.entries:
        row = rows.get(entry.id)
        if row is None:
            continue  # deleted, blocked, muted or left since the ranking was cached
        post = _post_out(row)
        post["score"] = entry.score
        if args["explain"]:
            post["score_components"] = scoring.Ranked(
                entry.id, entry.score, entry.components, entry.viewed).explain()
        results.append(post)
        shown.append((post, entry))
    sample = state().settings.ranking_log_sample
    if sample > 0 and random.random() < sample:  # noqa: S311 - sampling, not security
        _log_decision(user_id, args, ranked.count, controls, shown)
    return ranked.count, results


def _chronological(user_id: int | None, args: dict[str, Any], is_admin: bool = False
                   ) -> tuple[int, list[dict[str, Any]]]:
    start = (args["page"] - 1) * args["page_size"]
    with state().db.session() as session:
        count, rows = store.chronological_page(session, user_id, start, args["page_size"],
                                               is_admin)
    results = []
    for row in rows:
        post = _post_out(row)
        post["score"] = None
        if args["explain"]:
            post["score_components"] = None
        results.append(post)
    return count, results


@bp.route("/api/posts/", methods=["GET"])
@login_optional
@bp.arguments(RankedFeedQuery, location="query")
@bp.response(200, RankedPageOut)
def list_posts(args):
    """Posts ranked for the caller (personalized) or newest first (chronological).

    Page-number pagination. A personalized ranking covers a bounded candidate set (the
    newest RANKED_CANDIDATES_RECENT posts plus up to RANKED_CANDIDATES_SOCIAL newest posts
    by fellows and as many from joined collectives); ``count`` is its size. Posts the
    caller already viewed score half. A page past the last one is a 404.
    """
    user = g.user
    ordering = args["ordering"] or ("personalized" if user else "chronological")
    if user is None or ordering == "chronological":
        count, results = _chronological(user.id if user else None, args,
                                        bool(user and user.is_admin))
    else:
        count, results = _personalized(user.id, args, user.is_admin)
    page, size = args["page"], args["page_size"]
    if page > 1 and (page - 1) * size >= count:
        raise NotFound("Invalid page", code="invalid_page")
    body = {
        "count": count,
        "next": _page_url(page + 1 if page * size < count else None),
        "previous": _page_url(page - 1 if page > 1 else None),
        "results": results,
    }
    return jsonify(body)  # a Response: flask-smorest passes it through unserialised


# --- the viewer's writes -------------------------------------------------------------------


def _require_visible_post(session, post_id: int) -> None:
    if not store.post_is_visible(session, post_id, g.user.id, g.user.is_admin):
        raise NotFound("Post not found")


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
    """A heart is a community like: ``like_post`` writes it and bumps the viewer's calc
    version in the same transaction when it changed; True if this call changed it
    (raises ``NotFound``)."""
    return like_post(user_id, post_id, hearted, is_admin)


def _add_fact(post_id: int, add) -> dict[str, bool]:
    user_id = g.user.id
    with state().uow() as uow:
        _require_visible_post(uow.session, post_id)
        added = add(uow.session, user_id, post_id)
        if added:
            touch(uow, user_id)
        uow.commit()
    return {"added": added}


@bp.route("/api/posts/<id:post_id>/praise/", methods=["POST"])
@login_required
@bp.response(200, PraiseTrophyOut)
def praise(post_id: int):
    """Praise a post (once per user; ``added`` is false if already praised)."""
    return _add_fact(post_id, store.add_praise)


@bp.route("/api/posts/<id:post_id>/trophy/", methods=["POST"])
@login_required
@bp.response(200, PraiseTrophyOut)
def trophy(post_id: int):
    """Give a post a trophy (once per user; ``added`` is false if already given)."""
    return _add_fact(post_id, store.add_trophy)


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
    if me == other:
        raise ApiError("You cannot be your own fellow", code="self_fellow")
    with state().uow() as uow:
        write = store.add_fellow if fellow else store.remove_fellow
        changed = write(uow.session, me, other)
        if changed:
            for user_id in sorted((me, other)):  # one lock order: no deadlocks
                touch(uow, user_id)
        uow.commit()
    return changed


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
    with state().uow() as uow:
        if not store.collective_exists(uow.session, collective_id):
            raise NotFound("Collective not found")
        write = store.join_collective if member else store.leave_collective
        changed = write(uow.session, user_id, collective_id)
        if changed:
            touch(uow, user_id)
            set_membership(uow, user_id, collective_id, member)
        uow.commit()
    return changed


@bp.route("/api/user/preferences/")
class Preferences(MethodView):
    @login_required
    @bp.response(200, PreferencesOut)
    def get(self):
        with state().db.session() as session:
            return store.load_preferences(session, g.user.id).as_dict()

    @login_required
    @bp.arguments(PreferencesIn)
    @bp.response(200, PreferencesOut)
    def put(self, body: dict[str, list]):
        """Replace the given preference lists (fields left out are kept)."""
        user_id = g.user.id
        changes = {name: sorted(set(values)) for name, values in body.items()}
        if user_id in changes.get("blocked_users", []):
            raise ApiError("Invalid request", code="validation_error",
                           details={"blocked_users": ["You cannot block yourself."]})
        with state().uow() as uow:
            unknown = store.unknown_collectives(uow.session, changes.get("muted_collectives", []))
            if unknown:
                raise ApiError("Invalid request", code="validation_error", details={
                    "muted_collectives": [f"Unknown collective ids: {unknown}"]})
            saved = store.save_preferences(uow.session, user_id, changes)
            touch(uow, user_id)
            uow.commit()
        return saved.as_dict()


# --- the admin's ranking controls -----------------------------------------------------------


def _controls_out(enabled: bool, weights: dict[str, float]) -> dict[str, Any]:
    return {"enabled": enabled,
            "weights": {**state().settings.ranking_weights, **weights}}


@bp.route("/api/admin/ranking/")
class Ranking(MethodView):
    """Switch personalized ranking off and on, and change its weights, at run time."""

    @admin_required
    @bp.response(200, RankingOut)
    def get(self):
        """The controls in force (weights nobody set follow ``RANKING_WEIGHTS``)."""
        controls = load_controls()
        return _controls_out(controls.enabled, controls.weights)

    @admin_required
    @bp.arguments(RankingIn)
    @bp.response(200, RankingOut)
    def put(self, body: dict[str, Any]):
        """Change ``enabled`` and/or some weights (the others are kept). Stored in
        Postgres; every process ranks with it from the caller's next page (no restart, no
        page cached under the old controls is served)."""
        if not body:
            controls = load_controls()
            return _controls_out(controls.enabled, controls.weights)
        with state().uow() as uow:
            enabled, weights = store.save_ranking_controls(
                uow.session, body.get("enabled"), body.get("weights", {}))
            controls_changed(uow, state().cache.keys)
            uow.commit()
        return _controls_out(enabled, weights)
