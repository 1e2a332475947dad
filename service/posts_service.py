"""Post writes shared by the community feed (section 3) and the personalized feed (4).

Each function is one unit of work: Postgres rows and counters first, the community
feed's cache changes in the same outbox entry, then (after commit) a best-effort
re-score of the post in the trending set (see ``cache/community_feed.py`` for how stale
that can get). Raises ``NotFound`` for unknown or deleted posts, ``Forbidden`` when the
caller may not delete a post.

Visibility (API.md section 3): a post with a ``collective_id`` exists only for that
collective's members and for admins; for everyone else its endpoints answer ``NotFound``
(checked against Postgres in the write's own transaction), and feeds drop it on the way
out (``Visibility``, built from the viewer's cached memberships).

A like is a heart (section 4): ``like_post`` also bumps the liker's personalized-feed
version in the same transaction, whichever endpoint the like came through.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session

from cache import community_feed as cf
from cache import ranked_feed
from cache.client import CacheUnavailable
from service.errors import ApiError, Forbidden, NotFound
from service.state import state
from storage import posts
from storage.models import Comment, Post

log = logging.getLogger(__name__)

PATH = "community_feed"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def created_us(created_at: datetime) -> int:
    """``created_at`` as exact integer microseconds since the epoch."""
    if created_at.tzinfo is None:
        created_at = created_at.replace(tzinfo=UTC)
    return (created_at - EPOCH) // timedelta(microseconds=1)


@dataclass(frozen=True)
class Visibility:
    """Which posts one viewer may see: public ones, plus those of ``collectives``
    (``None``: every post, for admins). ``sql``: ``(viewer, is_admin)`` when Postgres
    applies the rule itself (Redis down: no member set to read), rows and counts then
    come filtered and ``collectives`` is None."""

    collectives: frozenset[int] | None
    sql: tuple[int | None, bool] | None = None

    @classmethod
    def of(cls, collectives: Iterable[int] | None) -> Visibility:
        return cls(None if collectives is None else frozenset(collectives))

    def sees(self, collective_id: int | None) -> bool:
        return (collective_id is None or self.collectives is None
                or collective_id in self.collectives)

    def total(self, public: int, per_collective: dict[int, int]) -> int:
        """A viewer's count from a count grouped by collective."""
        return public + sum(n for c, n in per_collective.items() if self.sees(c))


PUBLIC = Visibility(frozenset())


def _visible(session: Any, post_id: int, user_id: int | None, is_admin: bool) -> Post:
    post = posts.get_visible_post(session, post_id, user_id, is_admin)
    if post is None:
        raise NotFound("Post not found")
    return post


def create_post(author_id: int, is_admin: bool = False, **fields: Any) -> Post:
    """Create a post by ``author_id``; ``fields`` are post columns (title, tags...).

    An ``inspired_by_post_id`` must name a live post the author can see (share-locked
    until commit, so it cannot be deleted meanwhile); else ``ApiError`` (400) naming it.
    """
    app = state()
    ck = cf.CommunityKeys(app.cache.keys)
    with app.uow() as uow:
        inspired = fields.get("inspired_by_post_id")
        if inspired is not None and not posts.post_visible(uow.session, inspired, author_id,
                                                           is_admin, lock=True):
            raise ApiError("Invalid request", code="validation_error", details={
                "inspired_by_post_id": ["No live post with this id that you can see."]})
        post = posts.create_post(uow.session, author_id, **fields)
        cf.post_created(
            uow.change(cf.posts_scope()), uow.change(cf.author_scope(author_id)), ck,
            post.id, author_id, created_us(post.created_at),
            app.settings.recent_cache_size, app.settings.author_cache_size,
        )
        uow.commit()
    _rescore(post.id, new=True)
    return post


def delete_post(post_id: int, user_id: int, is_admin: bool = False) -> None:
    """Soft delete (author or admin). Deleting an already deleted post is a 404, and so
    is a post the caller may not see (unless they wrote it)."""
    app = state()
    ck = cf.CommunityKeys(app.cache.keys)
    with app.uow() as uow:
        post = posts.get_live_post(uow.session, post_id)
        if post is None:
            raise NotFound("Post not found")
        if post.author_id != user_id and not is_admin:
            if posts.get_visible_post(uow.session, post_id, user_id) is None:
                raise NotFound("Post not found")
            raise Forbidden("Only the author or an admin may delete this post")
        if not posts.soft_delete(uow.session, post_id):
            raise NotFound("Post not found")
        cf.post_deleted(uow.change(cf.posts_scope()),
                        uow.change(cf.author_scope(post.author_id)), ck, post_id,
                        post.author_id)
        uow.commit()
    _unrank(post_id)


def like_post(user_id: int, post_id: int, liked: bool, is_admin: bool = False) -> bool:
    """Like or unlike; True if the like row changed (idempotent otherwise).

    A change bumps the liker's personalized-feed version in the same transaction, so
    their next personalized page reflects it. Raises ``NotFound`` (also for a post the
    user may not see).
    """
    with state().uow() as uow:
        _visible(uow.session, post_id, user_id, is_admin)
        changed = posts.set_like(uow.session, post_id, user_id, liked)
        if changed:
            ranked_feed.touch(uow, user_id)
        uow.commit()
        if changed:
            _rescore(post_id, session=uow.session)
    return changed


def add_comment(user_id: int, post_id: int, body: str, is_admin: bool = False) -> Comment:
    """Add a comment (counted in trending). Raises ``NotFound``."""
    with state().uow() as uow:
        _visible(uow.session, post_id, user_id, is_admin)
        comment = posts.add_comment(uow.session, post_id, user_id, body)
        uow.commit()
        _rescore(post_id, session=uow.session)
    return comment


def record_view(user_id: int, post_id: int, is_admin: bool = False) -> bool:
    """Count a view unless this viewer had one counted in the last 30 minutes. Raises
    ``NotFound``."""
    with state().uow() as uow:
        _visible(uow.session, post_id, user_id, is_admin)
        counted = posts.record_view(uow.session, post_id, user_id)
        uow.commit()
        if counted:
            _rescore(post_id, session=uow.session)
    return counted


def set_membership(uow: Any, user_id: int, collective_id: int, member: bool) -> None:
    """Queue, in ``uow``, the cache change of a committed join (``member``) or leave: the
    user's cached collectives (their next community page is filtered with it)."""
    cf.membership_changed(uow.change(cf.colls_scope(user_id)),
                          cf.CommunityKeys(state().cache.keys), user_id, collective_id,
                          member)


def set_follow(user_id: int, followee_id: int, following: bool) -> bool:
    """Follow or unfollow; True if it changed. Callers reject self-follows first."""
    app = state()
    ck = cf.CommunityKeys(app.cache.keys)
    with app.uow() as uow:
        changed = posts.set_follow(uow.session, user_id, followee_id, following)
        if changed:
            cf.follow_changed(uow.change(cf.follows_scope(user_id)), ck, user_id,
                              followee_id, following)
        uow.commit()
    return changed


def engagement(post_id: int, viewer_id: int | None, is_admin: bool = False) -> dict[str, Any]:
    """Counts of a live post and whether the viewer likes it. Raises ``NotFound``."""
    with state().db.session() as session:
        counts = posts.post_counts(session, post_id, viewer_id, is_admin)
        if counts is None:
            raise NotFound("Post not found")
        liked = viewer_id is not None and posts.is_liked(session, post_id, viewer_id)
    likes, comments, views = counts
    return {"like_count": likes, "comment_count": comments, "view_count": views,
            "is_liked": liked}


# --- trending upkeep (best effort; the scheduled rebuild repairs what this misses) --------


def _rescore(post_id: int, new: bool = False, session: Session | None = None) -> None:
    """Re-score a post in the cached trending set from its committed engagement.

    ``session``: the committed unit of work's, read again in a new transaction (what a
    fresh session would see) without checking out and pinging another connection.
    """
    app = state()
    try:
        ref = cf.trending_ref(app.cache, PATH)
        if ref is None:
            return  # no trending set: the next read or rebuild computes it whole
        if session is not None:
            eng = posts.engagement_of(session, post_id)
        else:
            with app.db.session() as own:
                eng = posts.engagement_of(own, post_id)
        if eng is None:
            cf.rescore(app.cache, PATH, post_id, None, ref)
            return
        score = cf.trending_score(eng.like_count, eng.comment_count, eng.view_count,
                                  eng.is_featured, eng.created_at.timestamp(), float(ref))
        cf.rescore(app.cache, PATH, post_id, score, ref, new=new)
    except CacheUnavailable:
        log.debug("trending re-score of post %s skipped: cache unavailable", post_id)


def _unrank(post_id: int) -> None:
    app = state()
    try:
        ref = cf.trending_ref(app.cache, PATH)
        if ref is not None:
            cf.rescore(app.cache, PATH, post_id, None, ref)
    except CacheUnavailable:
        log.debug("trending removal of post %s skipped: cache unavailable", post_id)
