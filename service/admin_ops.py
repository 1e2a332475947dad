"""The admin setup use cases (groups and members, reels, collectives): plain functions of
the service's state, called by the routes in ``service/admin.py``. A membership change
commits with the group feed's cache change (the member's cached groups are dropped)."""

from __future__ import annotations

from typing import Any

from cache import group_feed as gf_cache
from service.bootstrap import AppState
from service.errors import NotFound
from storage import setup
from storage.models import Reel


def _membership_changed(app: AppState, uow: Any, user_id: int) -> None:
    uow.change(gf_cache.groups_scope(user_id)).op(
        "DEL", gf_cache.groups_key(app.cache.keys, user_id)
    )


def create_group(app: AppState, name: str) -> dict[str, Any]:
    with app.uow() as uow:
        group = setup.create_group(uow.session, name)
        uow.commit()
    return {"id": group.id, "name": group.name}


def add_member(app: AppState, group_id: int, user_id: int) -> None:
    """Idempotent. Raises ``NotFound`` for an unknown group."""
    with app.uow() as uow:
        if not setup.group_exists(uow.session, group_id):
            raise NotFound("Group not found")
        if setup.add_member(uow.session, group_id, user_id):
            _membership_changed(app, uow, user_id)
        uow.commit()


def remove_member(app: AppState, group_id: int, user_id: int) -> None:
    """Idempotent. Raises ``NotFound`` for an unknown group."""
    with app.uow() as uow:
        if not setup.group_exists(uow.session, group_id):
            raise NotFound("Group not found")
        if setup.remove_member(uow.session, group_id, user_id):
            _membership_changed(app, uow, user_id)
        uow.commit()


def create_reel(app: AppState, fields: dict[str, Any]) -> Reel:
    with app.uow() as uow:
        reel = setup.create_reel(uow.session, **fields)
        uow.commit()
    return reel


def create_collective(app: AppState, name: str) -> dict[str, Any]:
    with app.uow() as uow:
        collective = setup.create_collective(uow.session, name)
        uow.commit()
    return {"id": collective.id, "name": collective.name}
