"""The profile use cases (API.md "Profiles"): plain functions of the service's state,
called by the routes in ``service/profiles.py``. A profile is a ``users`` row's display
fields; a user who never saved one reads as seed 002's defaults."""

from __future__ import annotations

from typing import Any

from cache import posts as cache_posts
from service.bootstrap import AppState
from storage import profiles


def get_profile(app: AppState, user_id: int) -> dict[str, Any]:
    with app.db.read() as session:
        return profiles.get_profile(session, user_id)


def save_profile(app: AppState, user_id: int, changes: dict[str, Any]) -> dict[str, Any]:
    """Save the fields in ``changes`` (none: nothing written); returns the profile."""
    with app.uow() as uow:
        if not changes:
            return profiles.get_profile(uow.session, user_id)
        saved = profiles.save_profile(uow.session, user_id, changes)
        # The author's cached posts embed the profile: re-rendered in place.
        keys = app.cache.keys
        for post_id, version in profiles.bump_post_versions(
                uow.session, user_id, cache_posts.VERSION_PREFIX,
                cache_posts.VERSION_SUFFIX).items():
            cache_posts.on_author(cache_posts.adopt(uow, keys, post_id, version), keys,
                                  post_id, saved)
        uow.commit()
    return saved
