"""Profiles (API.md "Profiles"): the caller's own, and an admin's edit of anyone's.

A profile is what every feed shows as a post's ``author`` (seed 002's ``PostAuthor``):
``display_name``, ``avatar_url`` and ``subscription_tier``. A user who never saved one
shows seed 002's defaults ("Unknown", null, "free"). Feeds join the profile in the query
that loads a page's posts, and no cache holds a post's author, so a change shows in
every feed (cached pages included) at its next read.
"""

from __future__ import annotations

from typing import Any

from flask import g
from flask.views import MethodView
from marshmallow import Schema, ValidationError, fields, validate

from service import profiles_ops as ops
from service.api import Blueprint
from service.auth import admin_required, login_required
from service.state import state
from storage.models import SUBSCRIPTION_TIERS

bp = Blueprint("profiles", __name__, description="Profiles (a post's author)")


def _not_blank(value: str) -> None:
    if not value.strip():
        raise ValidationError("Must not be blank.")


class ProfileIn(Schema):
    """Fields left out keep their stored value; ``avatar_url: null`` removes the avatar."""

    display_name = fields.String(validate=[validate.Length(1, 100), _not_blank])
    avatar_url = fields.String(
        allow_none=True,
        validate=[validate.Length(max=2048),
                  validate.URL(schemes={"http", "https"}, require_tld=False)],
        metadata={"description": "an http(s) URL of at most 2048 characters, or null"},
    )


class AdminProfileIn(ProfileIn):
    subscription_tier = fields.String(validate=validate.OneOf(SUBSCRIPTION_TIERS))


class ProfileOut(Schema):
    id = fields.Integer(required=True)
    display_name = fields.String(required=True)
    avatar_url = fields.String(required=True, allow_none=True)
    subscription_tier = fields.String(required=True)


@bp.route("/api/user/profile/")
class OwnProfile(MethodView):
    @login_required
    @bp.response(200, ProfileOut)
    def get(self):
        """The caller's profile (the defaults if they never saved one)."""
        return ops.get_profile(state(), g.user.id)

    @login_required
    @bp.arguments(ProfileIn)
    @bp.response(200, ProfileOut)
    def put(self, body: dict[str, Any]):
        """Change the caller's display name and/or avatar (the tier is an admin's)."""
        return ops.save_profile(state(), g.user.id, body)


@bp.route("/api/users/<id:user_id>/profile/", methods=["PUT"])
@admin_required
@bp.arguments(AdminProfileIn)
@bp.response(200, ProfileOut)
def admin_put(body: dict[str, Any], user_id: int):
    """Change any user's profile, the subscription tier included (role admin)."""
    return ops.save_profile(state(), user_id, body)
