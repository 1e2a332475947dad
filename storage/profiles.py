"""SQL of profiles: a user's ``users`` row is their profile (seed 002's post author).

Feeds do not call these: they join ``users`` in the same query that loads a page's posts
(``storage.posts.load_page``, ``storage.ranked_feed``), so a profile change shows in every
feed at its next read and costs no extra statement. Functions never commit.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from storage.models import User

DEFAULT_DISPLAY_NAME = "Unknown"
DEFAULT_TIER = "free"


def author_json(user_id: int, display_name: str | None, avatar_url: str | None,
                tier: str | None) -> dict[str, Any]:
    """A post's ``author``; columns of a missing users row (outer join) are None."""
    return {
        "id": user_id,
        "display_name": display_name if display_name is not None else DEFAULT_DISPLAY_NAME,
        "avatar_url": avatar_url,
        "subscription_tier": tier or DEFAULT_TIER,
    }


def get_profile(session: Session, user_id: int) -> dict[str, Any]:
    row = session.execute(
        select(User.display_name, User.avatar_url, User.subscription_tier)
        .where(User.id == user_id)
    ).first()
    return author_json(user_id, *(row or (None, None, None)))


def save_profile(session: Session, user_id: int, changes: dict[str, Any]) -> dict[str, Any]:
    """Upsert the given fields (``display_name``, ``avatar_url``, ``subscription_tier``);
    others keep their stored value (or the defaults for a new row). Returns the profile."""
    values = {"id": user_id, "display_name": DEFAULT_DISPLAY_NAME, **changes}
    stmt = insert(User).values(values)
    stmt = stmt.on_conflict_do_update(
        index_elements=[User.id], set_={**changes, "updated_at": func.now()},
    ).returning(User.display_name, User.avatar_url, User.subscription_tier)
    return author_json(user_id, *session.execute(stmt).one())
