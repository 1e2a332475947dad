"""Admin setup endpoints: groups and members, reels, collectives (role admin)."""

from __future__ import annotations

from flask import Response
from marshmallow import Schema, fields, validate

from service import admin_ops as ops
from service.api import Blueprint
from service.auth import admin_required
from service.fields import UtcDateTime
from service.schemas import MemberIn, NamedOut, NameIn
from service.state import state

bp = Blueprint("admin", __name__, description="Admin setup (role admin)")


class ReelIn(Schema):
    video_url = fields.String(required=True, validate=validate.Length(1, 2000))
    description = fields.String(load_default=None, validate=validate.Length(max=5000))
    duration = fields.Integer(strict=True, required=True, validate=validate.Range(1, 86_400))
    is_available = fields.Boolean(load_default=True)


class ReelOut(Schema):
    reel_id = fields.Integer(attribute="id", required=True)
    video_url = fields.String()
    description = fields.String(allow_none=True)
    duration = fields.Integer()
    is_available = fields.Boolean()
    likes_count = fields.Integer()
    views_count = fields.Integer()
    created_at = UtcDateTime()


@bp.route("/api/v1/groups/", methods=["POST"])
@admin_required
@bp.arguments(NameIn)
@bp.response(201, NamedOut)
def create_group(body):
    return ops.create_group(state(), body["name"])


@bp.route("/api/v1/groups/<id:group_id>/members/", methods=["POST"])
@admin_required
@bp.arguments(MemberIn)
@bp.response(201, MemberIn)
def add_member(body, group_id: int):
    """Idempotent: adding a member twice is still a 201."""
    ops.add_member(state(), group_id, body["user_id"])
    return {"user_id": body["user_id"]}


@bp.route("/api/v1/groups/<id:group_id>/members/<id:user_id>/", methods=["DELETE"])
@admin_required
@bp.response(204)
def remove_member(group_id: int, user_id: int):
    ops.remove_member(state(), group_id, user_id)  # idempotent
    return Response(status=204)


@bp.route("/api/reels/", methods=["POST"])
@admin_required
@bp.arguments(ReelIn)
@bp.response(201, ReelOut)
def create_reel(body):
    return ops.create_reel(state(), body)


@bp.route("/api/collectives/", methods=["POST"])
@admin_required
@bp.arguments(NameIn)
@bp.response(201, NamedOut)
def create_collective(body):
    return ops.create_collective(state(), body["name"])
