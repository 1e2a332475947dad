"""SQL of profiles: a user's ``users`` row is their profile (seed 002's post author).

Feeds do not call these: they join ``users`` in the same query that loads a page's posts
(``storage.posts.load_page``, ``storage.posts.post_entities``, ``storage.ranked_feed``).
A post's cached entity embeds its author's profile, so a profile change bumps the cache
versions of the author's live posts in its transaction (``bump_post_versions``) and
re-renders them through the outbox. Functions never commit.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select, text
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


def bump_post_versions(session: Session, author_id: int, name_prefix: str,
                       name_suffix: str) -> dict[int, int]:
    """Bump the ``cache_versions`` row ``<prefix><post id><suffix>`` of each live post by
    ``author_id`` (one statement, in post id order); returns ``{post id: new version}``."""
    rows = session.execute(text(
        "INSERT INTO cache_versions (name, version) "
        "SELECT :pre || id || :suf, 1 FROM posts "
        "WHERE author_id = :author AND deleted_at IS NULL ORDER BY id "
        "ON CONFLICT (name) DO UPDATE SET version = cache_versions.version + 1 "
        "RETURNING name, version"),
        {"pre": name_prefix, "suf": name_suffix, "author": author_id}).all()
    cut = len(name_suffix)
    return {int(name[len(name_prefix):len(name) - cut]): int(version)
            for name, version in rows}
