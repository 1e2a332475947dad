"""Community feed (API section 3): posts, likes, views, comments, follows, and the
``trending`` / ``recent`` / ``following`` cursor pages: the routes. They parse, call a use
case of ``service.community_feed_ops`` (plain functions of ``AppState``) and render; the
schemas are in ``service.schemas``.
"""

from __future__ import annotations

from typing import Any

from flask import Response, g

from service import community_feed_ops as ops
from service.api import Blueprint
from service.auth import login_optional, login_required
from service.errors import ApiError, Unauthorized
from service.schemas import (
    CommentIn,
    CommentOut,
    EngagementOut,
    FeedArgs,
    FeedOut,
    FollowingOut,
    LikedOut,
    PostIn,
    PostOut,
    UnlikedOut,
)
from service.state import state

bp = Blueprint("community_feed", __name__, description="Community feed (section 3)")

MAX_TAGS, MAX_TAG_LENGTH = 20, 50


def parse_tags(raw: str | None) -> list[str]:
    """The ``tags`` query argument (comma separated): unique, sorted, blanks dropped;
    more than ``MAX_TAGS`` or one longer than ``MAX_TAG_LENGTH`` is a 400."""
    if raw is None:
        return []
    tags = sorted({t.strip() for t in raw.split(",") if t.strip()})
    if len(tags) > MAX_TAGS or any(len(t) > MAX_TAG_LENGTH for t in tags):
        raise ApiError("Invalid request", code="validation_error",
                       details={"tags": ["At most 20 tags of at most 50 characters."]})
    return tags


@bp.route("/community/posts", methods=["POST"])
@login_required
@bp.arguments(PostIn)
@bp.response(201, PostOut)
def create_post(body):
    return ops.create_post(state(), g.user.id, g.user.is_admin, body)


@bp.route("/community/posts/<id:post_id>", methods=["DELETE"])
@login_required
@bp.response(204)
def delete_post(post_id: int):
    ops.delete_post(state(), post_id, g.user.id, g.user.is_admin)
    return Response(status=204)


@bp.route("/community/posts/<id:post_id>/like", methods=["POST"])
@login_required
@bp.response(200, LikedOut)
def like(post_id: int):
    """Like a post: ``{"liked": true}`` if this call added the like, ``false`` if the
    caller already liked it."""
    return {"liked": ops.like_post(state(), g.user.id, post_id, True, g.user.is_admin)}


@bp.route("/community/posts/<id:post_id>/like", methods=["DELETE"])
@login_required
@bp.response(200, UnlikedOut)
def unlike(post_id: int):
    """Remove a like: ``{"unliked": true}`` if this call removed it, ``false`` if there
    was none."""
    return {"unliked": ops.like_post(state(), g.user.id, post_id, False, g.user.is_admin)}


@bp.route("/community/posts/<id:post_id>/view", methods=["POST"])
@login_required
@bp.response(204)
def view(post_id: int):
    ops.record_view(state(), g.user.id, post_id, g.user.is_admin)
    return Response(status=204)


@bp.route("/community/posts/<id:post_id>/comments", methods=["POST"])
@login_required
@bp.arguments(CommentIn)
@bp.response(201, CommentOut)
def comment(body, post_id: int):
    return ops.add_comment(state(), g.user.id, post_id, body["body"], g.user.is_admin)


@bp.route("/community/posts/<id:post_id>/engagement", methods=["GET"])
@login_optional
@bp.response(200, EngagementOut)
def engagement(post_id: int):
    return ops.engagement(state(), post_id, g.user.id if g.user else None,
                          bool(g.user and g.user.is_admin))


@bp.route("/community/users/<id:user_id>/follow", methods=["POST"])
@login_required
@bp.response(200, FollowingOut)
def follow(user_id: int):
    """Follow a user: ``{"following": true}`` if this call started following, ``false``
    if the caller already followed them."""
    return {"following": ops.set_follow(state(), g.user.id, user_id, True)}


@bp.route("/community/users/<id:user_id>/follow", methods=["DELETE"])
@login_required
@bp.response(200, FollowingOut)
def unfollow(user_id: int):
    """Unfollow a user: ``{"following": true}`` if this call stopped following (the answer
    says whether the call changed anything), ``false`` if the caller did not follow them."""
    return {"following": ops.set_follow(state(), g.user.id, user_id, False)}


@bp.route("/community/feed", methods=["GET"])
@login_optional
@bp.arguments(FeedArgs, location="query")
@bp.response(200, FeedOut)
def feed(args: dict[str, Any]):
    """Posts of one feed, newest (``recent``, ``following``) or most trending first.

    Only posts the caller may see are listed and counted (a collective's posts for its
    members and admins; never those of authors the caller blocked). A page examines at
    most a fixed number of posts, so it can hold fewer than ``limit`` posts (even none)
    with ``has_more`` true: go on with ``next_cursor``. ``recent`` and ``following``
    pages filtered by an asset type or by tags few posts have are read from an index
    (full pages); a filter no post matches answers an empty last page at once.
    """
    tags = parse_tags(args["tags"])
    user = g.user
    viewer = user.id if user else None
    if args["feed_type"] == "following" and viewer is None:
        raise Unauthorized("The following feed needs a signed-in user",
                           code="authentication_required")
    # Assembled from cached JSON (no per-post dump); FeedOut stays the contract.
    return Response(ops.feed_page(state(), viewer, bool(user and user.is_admin),
                                  args["feed_type"], args["cursor"], args["limit"],
                                  args["asset_type"], tags), mimetype="application/json")
