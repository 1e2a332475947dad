"""SQL for the admin setup endpoints: groups and members, reels, collectives."""

from __future__ import annotations

from sqlalchemy import delete, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from storage.models import Collective, Group, GroupMember, Reel


def create_group(session: Session, name: str) -> Group:
    group = Group(name=name)
    session.add(group)
    session.flush()
    return group


def group_exists(session: Session, group_id: int) -> bool:
    return session.get(Group, group_id) is not None


def add_member(session: Session, group_id: int, user_id: int) -> bool:
    """Add a member; returns False if they already were one (idempotent)."""
    result = session.execute(
        insert(GroupMember)
        .values(group_id=group_id, user_id=user_id)
        .on_conflict_do_nothing()
        .returning(GroupMember.user_id)
    )
    return result.first() is not None


def remove_member(session: Session, group_id: int, user_id: int) -> bool:
    result = session.execute(
        delete(GroupMember).where(
            GroupMember.group_id == group_id, GroupMember.user_id == user_id
        )
    )
    return result.rowcount > 0


def is_member(session: Session, group_id: int, user_id: int) -> bool:
    return (
        session.execute(
            select(GroupMember.user_id).where(
                GroupMember.group_id == group_id, GroupMember.user_id == user_id
            )
        ).first()
        is not None
    )


def create_reel(
    session: Session, video_url: str, description: str | None, duration: int, is_available: bool
) -> Reel:
    reel = Reel(
        video_url=video_url, description=description, duration=duration, is_available=is_available
    )
    session.add(reel)
    session.flush()
    session.refresh(reel)
    return reel


def create_collective(session: Session, name: str) -> Collective:
    collective = Collective(name=name)
    session.add(collective)
    session.flush()
    return collective
