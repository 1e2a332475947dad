"""Schemas shared by every section: the error body, small admin/setup bodies, and the post
as both feeds show it (``PostFieldsOut`` and its one builder, ``post_fields``); and the
community feed's (section 3) request and response bodies."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from marshmallow import Schema, fields, validate

from service.fields import Id, UtcDateTime

# Every toggle's answer (API.md, Conventions): whether this call changed anything.
TOGGLE_CHANGED = ("true if this call changed anything (added or removed), false if it was "
                  "already so: a repeat is harmless and answers false")


class ErrorSchema(Schema):
    error = fields.String(required=True)
    code = fields.String()
    details = fields.Dict()


class NameIn(Schema):
    name = fields.String(required=True, validate=validate.Length(1, 200))


class NamedOut(Schema):
    id = fields.Integer(required=True)
    name = fields.String(required=True)


class MemberIn(Schema):
    user_id = Id(required=True)


class StatusOut(Schema):
    status = fields.String(required=True)


class ReadyOut(Schema):
    status = fields.String(required=True)
    postgres = fields.String(required=True)
    redis = fields.String(required=True)


class AuthorOut(Schema):
    """A post's author: their profile, or the defaults ("Unknown", null, "free")."""

    id = fields.Integer(required=True)
    display_name = fields.String(required=True)
    avatar_url = fields.String(required=True, allow_none=True)
    subscription_tier = fields.String(required=True,
                                      validate=validate.OneOf(["free", "plus", "pro"]))


class PostFieldsOut(Schema):
    """A post as both feeds show it (sections 3 and 4 share one posts table)."""

    id = fields.Integer()
    user_id = fields.Integer(metadata={"description": "the author (seed 002)"})
    author_id = fields.Integer(metadata={"description": "synonym of user_id"})
    author = fields.Nested(AuthorOut)
    title = fields.String()
    description = fields.String(allow_none=True)
    tags = fields.List(fields.String())
    post_type = fields.String()
    asset_type = fields.String(allow_none=True)
    asset_url = fields.String(allow_none=True)
    collective_id = fields.Integer(allow_none=True)
    show_prompt = fields.Boolean()
    prompt = fields.String(allow_none=True, metadata={
        "description": "the prompt when show_prompt is true, else null (a hidden prompt "
                       "never leaves the service)"})
    is_featured = fields.Boolean()
    inspired_by_post_id = fields.Integer(allow_none=True)
    created_at = UtcDateTime()
    updated_at = UtcDateTime()
    like_count = fields.Integer(metadata={"description": "likes (= hearts)"})
    comment_count = fields.Integer()
    view_count = fields.Integer()


# The columns of ``PostFieldsOut`` a post row carries under the same name.
POST_COLUMNS = ("id", "title", "description", "post_type", "asset_type", "asset_url",
                "collective_id", "show_prompt", "is_featured", "inspired_by_post_id",
                "created_at", "updated_at", "like_count", "comment_count", "view_count")


def post_fields(get: Callable[[str], Any], author: dict[str, Any]) -> dict[str, Any]:
    """A post's ``PostFieldsOut`` fields from ``get(column)`` (an ORM post's attributes or a
    row's items): the one place a post is built for output, so both feeds agree."""
    out = {name: get(name) for name in POST_COLUMNS}
    out["user_id"] = out["author_id"] = get("author_id")
    out["tags"] = list(get("tags") or [])
    out["prompt"] = get("prompt") if out["show_prompt"] else None  # a hidden prompt never leaves
    out["author"] = author
    return out


# --- the community feed (section 3) ---------------------------------------------------------


class PostIn(Schema):
    title = fields.String(required=True, validate=validate.Length(1, 300))
    description = fields.String(load_default=None, allow_none=True,
                                validate=validate.Length(max=10_000))
    tags = fields.List(fields.String(validate=validate.Length(1, 50)), load_default=list,
                       validate=validate.Length(max=20))
    post_type = fields.String(load_default="post", validate=validate.Length(1, 50))
    asset_type = fields.String(load_default=None, allow_none=True,
                               validate=validate.Length(1, 50))
    asset_url = fields.String(load_default=None, allow_none=True,
                              validate=validate.Length(max=2000))
    collective_id = Id(load_default=None, allow_none=True)
    show_prompt = fields.Boolean(load_default=False)
    prompt = fields.String(load_default=None, allow_none=True,
                           validate=validate.Length(max=5000))
    inspired_by_post_id = Id(load_default=None, allow_none=True,
                             metadata={"description": "a live post the caller can see"})


class PostOut(PostFieldsOut):
    is_liked_by_viewer = fields.Boolean()


class FeedArgs(Schema):
    # The answer depends on the query string alone (the cursor is decoded by the page).
    MEMO_QUERY = True

    feed_type = fields.String(load_default="trending",
                              validate=validate.OneOf(["trending", "recent", "following"]))
    cursor = fields.String(load_default=None, validate=validate.Length(max=2000))
    limit = fields.Integer(load_default=20, validate=validate.Range(1, 50))
    asset_type = fields.String(load_default=None, validate=validate.Length(1, 50))
    tags = fields.String(load_default=None, validate=validate.Length(max=1100))


class FeedOut(Schema):
    posts = fields.List(fields.Nested(PostOut))
    total_count = fields.Integer()
    has_more = fields.Boolean()
    next_cursor = fields.String(allow_none=True)


class CommentIn(Schema):
    body = fields.String(required=True, validate=validate.Length(1, 10_000))


class CommentOut(Schema):
    id = fields.Integer()
    post_id = fields.Integer()
    author_id = fields.Integer()
    body = fields.String()
    created_at = UtcDateTime()


class LikedOut(Schema):
    liked = fields.Boolean(required=True, metadata={"description": TOGGLE_CHANGED})


class UnlikedOut(Schema):
    unliked = fields.Boolean(required=True, metadata={"description": TOGGLE_CHANGED})


class FollowingOut(Schema):
    following = fields.Boolean(required=True, metadata={"description": TOGGLE_CHANGED})


class EngagementOut(Schema):
    like_count = fields.Integer()
    comment_count = fields.Integer()
    view_count = fields.Integer()
    is_liked = fields.Boolean()
