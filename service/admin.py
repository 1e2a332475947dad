"""Admin setup endpoints: groups and members, reels, collectives (role admin)."""

from __future__ import annotations

from flask import Response
from marshmallow import Schema, fields, validate

from cache import group_feed as gf_cache
from service.api import Blueprint
from service.auth import admin_required
from service.errors import NotFound
from service.fields import UtcDateTime
from service.schemas import MemberIn, NamedOut, NameIn
from service.state import state
from storage import setup

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


def _membership_changed(uow, user_id: int) -> None:
    app_state = state()
    uow.change(gf_cache.groups_scope(user_id)).op(
        "DEL", gf_cache.groups_key(app_state.cache.keys, user_id)
    )


@bp.route("/api/v1/groups/", methods=["POST"])
@admin_required
@bp.arguments(NameIn)
@bp.response(201, NamedOut)
def create_group(body):
    with state().uow() as uow:
        group = setup.create_group(uow.session, body["name"])
        uow.commit()
    return {"id": group.id, "name": group.name}


@bp.route("/api/v1/groups/<id:group_id>/members/", methods=["POST"])
@admin_required
@bp.arguments(MemberIn)
@bp.response(201, MemberIn)
def add_member(body, group_id: int):
    """Idempotent: adding a member twice is still a 201."""
    with state().uow() as uow:
        if not setup.group_exists(uow.session, group_id):
            raise NotFound("Group not found")
        if setup.add_member(uow.session, group_id, body["user_id"]):
            _membership_changed(uow, body["user_id"])
        uow.commit()
    return {"user_id": body["user_id"]}


@bp.route("/api/v1/groups/<id:group_id>/members/<id:user_id>/", methods=["DELETE"])
@admin_required
@bp.response(204)
def remove_member(group_id: int, user_id: int):
    with state().uow() as uow:
        if not setup.group_exists(uow.session, group_id):
            raise NotFound("Group not found")
        if setup.remove_member(uow.session, group_id, user_id):  # idempotent
            _membership_changed(uow, user_id)
        uow.commit()
    return Response(status=204)


@bp.route("/api/reels/", methods=["POST"])
@admin_required
@bp.arguments(ReelIn)
@bp.response(201, ReelOut)
def create_reel(body):
    with state().uow() as uow:
        reel = setup.create_reel(uow.session, **body)
        uow.commit()
    return reel


@bp.route("/api/collectives/", methods=["POST"])
@admin_required
@bp.arguments(NameIn)
@bp.response(201, NamedOut)
def create_collective(body):
    with state().uow() as uow:
        collective = setup.create_collective(uow.session, body["name"])
        uow.commit()
    return {"id": collective.id, "name": collective.name}
