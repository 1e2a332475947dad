"""SQL for posts and their engagement facts: likes (= hearts), comments, views, follows.

Shared by the community feed (API section 3) and the personalized feed (section 4).
Counters on ``posts`` follow the committed fact rows in the same transaction: a like row
inserted or deleted changes ``like_count`` by exactly one, so counts stay exact under any
concurrency (the fact row's primary key decides who changed something).

Functions take a ``Session`` and never commit: the caller's unit of work does.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    BigInteger,
    Integer,
    String,
    and_,
    any_,
    bindparam,
    cast,
    delete,
    func,
    literal_column,
    or_,
    select,
    text,
    true,
    tuple_,
)
from sqlalchemy.dialects.postgresql import ARRAY, insert
from sqlalchemy.dialects.postgresql.psycopg import dialect as psycopg_dialect
from sqlalchemy.orm import Session

from storage.models import (
    CollectiveMember,
    Comment,
    Follow,
    Post,
    PostLike,
    PostView,
    User,
    UserPreferences,
)
from storage.profiles import author_json

VIEW_DEBOUNCE_SECONDS = 30 * 60


@dataclass(frozen=True)
class PostRow:
    """A live post with its counters, its author's profile (``profiles.author_json``) and
    the viewer's like."""

    post: Post
    author: dict[str, Any]
    liked: bool


@dataclass(frozen=True)
class Counted:
    """What a counted write changed: whether its fact row changed, the post's counter as
    committed (absolute, read under the post's row lock) and the ``cache_versions`` rows
    it bumped in the same statement (``{name: version}``)."""

    changed: bool
    count: int = 0
    versions: dict[str, int] = field(default_factory=dict)
    after: LikeResult | None = None  # a like's: the post's engagement after it


# The ``cache_versions`` rows named by ``:version_names`` bumped, in the order given, once
# for each row of the CTE ``p`` (a statement's changed posts row): ``v(name, version)``.
_VERSIONS_CTE = (
    "v AS (INSERT INTO cache_versions (name, version) "
    "  SELECT n.name, 1 FROM p, unnest(CAST(:version_names AS text[])) "
    "    WITH ORDINALITY AS n(name, ord) ORDER BY n.ord "
    "  ON CONFLICT (name) DO UPDATE SET version = cache_versions.version + 1 "
    "  RETURNING name, version) "
)


def _bump_with_versions(session: Session, update_sql: str, params: dict[str, Any],
                        version_names: Sequence[str]) -> tuple[int, dict[str, int]] | None:
    """Run ``update_sql`` (an UPDATE of one posts row ``RETURNING <value> AS n``) and, if it
    changed a row, bump the ``cache_versions`` rows ``version_names`` in the same statement
    (after the post's row lock, in the order given: every writer of a post locks in this
    order). Returns ``(n, {name: version})``, or None if no row changed."""
    rows = session.execute(text(
        f"WITH p AS ({update_sql}), " + _VERSIONS_CTE +
        "SELECT p.n, v.name, v.version FROM p LEFT JOIN v ON true"),
        {**params, "version_names": list(version_names)}).all()
    if not rows:
        return None
    return int(rows[0][0]), {name: int(v) for _, name, v in rows if name is not None}


def add_to_counter(session: Session, post_id: int, column: str, delta: int,
                    version_names: Sequence[str]) -> Counted:
    if column not in COUNTERS:
        raise ValueError(f"{column} is not a post counter")
    got = _bump_with_versions(
        session, f"UPDATE posts SET {column} = {column} + :delta WHERE id = :post "
                 f"RETURNING {column} AS n",
        {"delta": delta, "post": post_id}, version_names)
    if got is None:
        return Counted(True)
    return Counted(True, got[0], got[1])


COUNTERS = ("like_count", "comment_count", "view_count", "praise_count", "trophy_count")


def create_post(session: Session, author_id: int, **fields: object) -> Post:
    """Insert a post (``fields`` are Post columns); returns it with server defaults loaded."""
    post = Post(author_id=author_id, **fields)
    session.add(post)
    session.flush()
    session.refresh(post)
    return post


def get_live_post(session: Session, post_id: int, lock: bool = False) -> Post | None:
    """The post if it exists and is not deleted. ``lock`` takes a share lock on its row so
    a concurrent soft delete waits for this transaction."""
    query = select(Post).where(Post.id == post_id, Post.deleted_at.is_(None))
    if lock:
        query = query.with_for_update(read=True)
    return session.execute(query).scalar_one_or_none()


def can_see(viewer_id: Any, is_admin: bool = False, post: Any = Post):
    """SQL condition: the viewer may see the post (API.md section 3, "Visibility"): public
    posts for everyone, a collective's posts for its members and for admins only.
    ``viewer_id``: an id, None (anonymous) or a bound parameter; ``post``: ``Post``, or
    columns named as its own (a subquery's)."""
    if is_admin:
        return true()
    if viewer_id is None:
        return post.collective_id.is_(None)
    member = (select(CollectiveMember.user_id)
              .where(CollectiveMember.collective_id == post.collective_id,
                     CollectiveMember.user_id == viewer_id)
              .exists())
    return or_(post.collective_id.is_(None), member)


def get_visible_post(session: Session, post_id: int, viewer_id: int | None,
                     is_admin: bool = False) -> Post | None:
    """The post if it is live and the viewer may see it (else None: a 404 for them)."""
    query = select(Post).where(Post.id == post_id, Post.deleted_at.is_(None),
                               can_see(viewer_id, is_admin))
    return session.execute(query).scalar_one_or_none()


def collectives_of(session: Session, user_id: int) -> list[int]:
    """The collectives ``user_id`` belongs to."""
    return sorted(session.execute(
        select(CollectiveMember.collective_id).where(CollectiveMember.user_id == user_id)
    ).scalars())


def post_visible(session: Session, post_id: int, viewer_id: int, is_admin: bool = False,
                 lock: bool = False) -> bool:
    """Whether the post is live and the viewer may see it (``can_see``). ``lock`` as in
    ``get_live_post``: a concurrent soft delete waits for this transaction."""
    query = select(Post.id).where(Post.id == post_id, Post.deleted_at.is_(None),
                                  can_see(viewer_id, is_admin))
    if lock:
        query = query.with_for_update(read=True)
    return session.execute(query).scalar_one_or_none() is not None


def soft_delete(session: Session, post_id: int,
                version_names: Sequence[str] = ()) -> Counted:
    """Mark the post deleted (and bump ``version_names`` in the same statement);
    ``changed`` False if it was already deleted or does not exist."""
    got = _bump_with_versions(
        session, "UPDATE posts SET deleted_at = now() WHERE id = :post AND deleted_at IS NULL "
                 "RETURNING id AS n", {"post": post_id}, version_names)
    return Counted(False) if got is None else Counted(True, 0, got[1])


# One statement per like or unlike: the visibility check (live, and public or the
# viewer's collective's, or an admin: ``can_see``); the like row; ``like_count`` moved with
# it (same transaction, so the counter is exact under concurrency); the versions bumped
# after the post's row lock (the order every writer of a post takes); the post's engagement
# after it (what the trending re-score needs, no read after commit). No row: the post is
# missing, deleted or hidden from the viewer; a row without ``id``: the like row did not
# change (already liked, or never liked).
_VISIBLE_CTE = (
    "vis AS (SELECT posts.id AS post_id FROM posts WHERE posts.id = :post_id"
    " AND posts.deleted_at IS NULL AND (posts.collective_id IS NULL OR :is_admin"
    " OR EXISTS (SELECT 1 FROM collective_members m"
    " WHERE m.collective_id = posts.collective_id AND m.user_id = :user_id)))"
)
_TOGGLE_LIKE = {
    True: "INSERT INTO post_likes (post_id, user_id) SELECT post_id, :user_id FROM vis"
          " ON CONFLICT DO NOTHING RETURNING post_id",
    False: "DELETE FROM post_likes USING vis WHERE post_likes.post_id = vis.post_id"
           " AND post_likes.user_id = :user_id RETURNING post_likes.post_id",
}
_SET_LIKE = {
    liked: text(
        f"WITH {_VISIBLE_CTE}, toggled AS ({toggle}), "
        "p AS (UPDATE posts SET like_count = posts.like_count + :delta FROM toggled"
        " WHERE posts.id = toggled.post_id"
        " RETURNING posts.id, posts.created_at, posts.like_count, posts.comment_count,"
        " posts.view_count, posts.is_featured, posts.deleted_at IS NOT NULL AS deleted), "
        + _VERSIONS_CTE +
        "SELECT vis.post_id AS visible, p.*, v.name AS version_name, v.version"
        " FROM vis LEFT JOIN p ON true LEFT JOIN v ON true")
    for liked, toggle in _TOGGLE_LIKE.items()
}


@dataclass(frozen=True)
class LikeResult:
    """A like row changed: the post's engagement after it (None if the post is deleted)."""

    engagement: Engagement | None


def set_like(session: Session, post_id: int, user_id: int, liked: bool,
             version_names: Sequence[str] = (), is_admin: bool = False) -> Counted | None:
    """Like (``liked=True``) or unlike a post the user may see, in one statement that
    also bumps ``version_names``; None if the post is missing, deleted or hidden from
    the user (``can_see``); else ``changed`` if the like row changed, ``count`` the
    committed ``like_count`` and ``after`` the engagement for the re-score."""
    rows = session.execute(_SET_LIKE[liked], {
        "post_id": post_id, "user_id": user_id, "delta": 1 if liked else -1,
        "is_admin": is_admin, "version_names": list(version_names)}).all()
    if not rows:
        return None
    row = rows[0]
    if row.id is None:
        return Counted(False)
    after = LikeResult(None if row.deleted else Engagement(
        row.id, row.created_at, row.like_count, row.comment_count, row.view_count,
        row.is_featured))
    versions = {r.version_name: int(r.version) for r in rows if r.version_name is not None}
    return Counted(True, int(row.like_count), versions, after)


def is_liked(session: Session, post_id: int, user_id: int) -> bool:
    return (
        session.execute(
            select(PostLike.user_id).where(
                PostLike.post_id == post_id, PostLike.user_id == user_id
            )
        ).first()
        is not None
    )


def add_comment(session: Session, post_id: int, author_id: int, body: str,
                version_names: Sequence[str] = ()) -> tuple[Comment, Counted]:
    """Insert a comment and count it on the post (same transaction; ``version_names``
    bumped in the counter's statement)."""
    comment = Comment(post_id=post_id, author_id=author_id, body=body)
    session.add(comment)
    counted = add_to_counter(session, post_id, "comment_count", 1, version_names)
    session.flush()
    session.refresh(comment)
    return comment, counted


_COUNT_VIEW = text(
    "INSERT INTO post_views (post_id, viewer_id, counted_at) VALUES (:p, :v, now()) "
    "ON CONFLICT (post_id, viewer_id) DO UPDATE SET counted_at = now() "
    "WHERE post_views.counted_at <= now() - make_interval(secs => :debounce) "
    "RETURNING counted_at"
)


def record_view(session: Session, post_id: int, viewer_id: int,
                debounce_seconds: int = VIEW_DEBOUNCE_SECONDS,
                version_names: Sequence[str] = ()) -> Counted:
    """Count a view unless this viewer's last counted view of the post is more recent
    than ``debounce_seconds``; ``changed`` if it counted (``view_count`` then grows by
    one, and ``version_names`` are bumped in that statement)."""
    counted = session.execute(
        _COUNT_VIEW, {"p": post_id, "v": viewer_id, "debounce": debounce_seconds}
    ).first()
    if counted is None:
        return Counted(False)
    return add_to_counter(session, post_id, "view_count", 1, version_names)


def post_counts(session: Session, post_id: int, viewer_id: int | None = None,
                is_admin: bool = True) -> tuple[int, int, int] | None:
    """(like_count, comment_count, view_count) of a live post the viewer may see, or None
    (by default: as an admin, whoever asks)."""
    row = session.execute(
        select(Post.like_count, Post.comment_count, Post.view_count).where(
            Post.id == post_id, Post.deleted_at.is_(None), can_see(viewer_id, is_admin)
        )
    ).first()
    return None if row is None else (row[0], row[1], row[2])


# --- follows --------------------------------------------------------------------------------


def set_follow(session: Session, follower_id: int, followee_id: int, following: bool) -> bool:
    """Follow or unfollow; True if the row changed. Callers reject self-follows first."""
    if following:
        changed = session.execute(
            insert(Follow)
            .values(follower_id=follower_id, followee_id=followee_id)
            .on_conflict_do_nothing()
            .returning(Follow.follower_id)
        ).first()
    else:
        changed = session.execute(
            delete(Follow)
            .where(Follow.follower_id == follower_id, Follow.followee_id == followee_id)
            .returning(Follow.follower_id)
        ).first()
    return changed is not None


def followees(session: Session, follower_id: int) -> list[int]:
    return list(
        session.execute(
            select(Follow.followee_id).where(Follow.follower_id == follower_id)
        ).scalars()
    )


# --- feed queries ---------------------------------------------------------------------------


def _filtered(query, asset_type: str | None, tags: Sequence[str]):
    if asset_type is not None:
        query = query.where(Post.asset_type == asset_type)
    if tags:
        query = query.where(Post.tags.contains(list(tags)))
    return query


def not_blocked_by(viewer_id: Any, post: Any = Post):
    """SQL condition: the post's author is not one the viewer blocked (their
    ``user_preferences.blocked_users``; no preferences row: nobody blocked). ``viewer_id``:
    an id or a bound parameter; ``post``: ``Post``, or columns named as its own (a
    subquery's)."""
    return ~(select(UserPreferences.user_id)
             .where(UserPreferences.user_id == viewer_id,
                    post.author_id == any_(UserPreferences.blocked_users))
             .exists())


def blocked_by(session: Session, user_id: int) -> list[int]:
    """The authors ``user_id`` blocked (sorted)."""
    row = session.execute(select(UserPreferences.blocked_users)
                          .where(UserPreferences.user_id == user_id)).scalar_one_or_none()
    return sorted(set(row or ()))


def load_page(
    session: Session,
    post_ids: Sequence[int],
    viewer_id: int | None,
    asset_type: str | None = None,
    tags: Sequence[str] = (),
    visible_to: tuple[int | None, bool] | None = None,
) -> dict[int, PostRow]:
    """Hydrate ``post_ids`` in one query: live posts matching the filters, their authors'
    profiles (the defaults when the author has no users row) and whether the viewer
    likes each one. Deleted or non-matching ids are absent from the result, and so are
    posts by authors the viewer blocked and posts ``visible_to = (viewer, is_admin)`` may
    not see, if given."""
    if not post_ids:
        return {}
    liked = (
        select(PostLike.user_id)
        .where(PostLike.post_id == Post.id, PostLike.user_id == viewer_id)
        .exists()
        if viewer_id is not None
        else text("false")
    )
    query = (
        select(Post, User.display_name, User.avatar_url, User.subscription_tier, liked)
        .outerjoin(User, User.id == Post.author_id)
        .where(Post.id.in_(list(post_ids)), Post.deleted_at.is_(None))
    )
    query = _filtered(query, asset_type, tags)
    if visible_to is not None:
        query = query.where(can_see(*visible_to))
    if viewer_id is not None:  # the viewer's blocked authors: in this query, no statement more
        query = query.where(not_blocked_by(viewer_id))
    rows: dict[int, PostRow] = {}
    for post, name, avatar, tier, is_liked_row in session.execute(query):
        rows[post.id] = PostRow(post, author_json(post.author_id, name, avatar, tier),
                                bool(is_liked_row))
    return rows


def post_entities(session: Session, post_ids: Sequence[int]) -> dict[int, PostRow]:
    """The live posts among ``post_ids`` with their authors' profiles, as every viewer sees
    them (one query; ``liked`` False: a viewer's like is not part of a post's entity)."""
    if not post_ids:
        return {}
    query = (
        select(Post, User.display_name, User.avatar_url, User.subscription_tier)
        .outerjoin(User, User.id == Post.author_id)
        .where(Post.id.in_(list(post_ids)), Post.deleted_at.is_(None))
    )
    return {post.id: PostRow(post, author_json(post.author_id, name, avatar, tier), False)
            for post, name, avatar, tier in session.execute(query)}


def liked_ids(session: Session, user_id: int, limit: int) -> list[int]:
    """Up to ``limit`` ids of posts ``user_id`` likes (the likes index, any order)."""
    return [int(i) for i in session.execute(
        select(PostLike.post_id).where(PostLike.user_id == user_id).limit(limit)).scalars()]


def liked_among(session: Session, user_id: int, post_ids: Sequence[int]) -> set[int]:
    """Which of ``post_ids`` ``user_id`` likes (one indexed query)."""
    if not post_ids:
        return set()
    return {int(i) for i in session.execute(
        select(PostLike.post_id).where(PostLike.user_id == user_id,
                                       PostLike.post_id.in_(list(post_ids)))).scalars()}


def recent_keys(
    session: Session,
    limit: int,
    before: tuple[int, int] | None = None,
    authors: Sequence[int] | None = None,
    asset_type: str | None = None,
    tags: Sequence[str] = (),
) -> list[tuple[int, int]]:
    """Newest-first ``(created_at_us, id)`` of live posts strictly after the ``before`` key,
    optionally only by ``authors`` and matching the filters."""
    us = _created_us()
    query = select(us, Post.id).where(Post.deleted_at.is_(None))
    if authors is not None:
        if not authors:
            return []
        query = query.where(Post.author_id.in_(list(authors)))
    if before is not None:
        ts, pid = before
        query = query.where(or_(us < ts, and_(us == ts, Post.id < pid)))
    query = _filtered(query, asset_type, tags)
    query = query.order_by(Post.created_at.desc(), Post.id.desc()).limit(limit)
    return [(int(t), int(i)) for t, i in session.execute(query)]


def matching_keys(
    session: Session,
    limit: int,
    before: tuple[int, int] | None = None,
    *,
    authors: Sequence[int] | None = None,
    asset_type: str | None = None,
    tags: Sequence[str] = (),
    viewer_id: int | None = None,
    collectives: Sequence[int] | None = None,
    visible_to: tuple[int | None, bool] | None = None,
    sparse: bool = False,
    window: int | None = None,
) -> list[tuple[int, int]]:
    """Newest-first ``(created_at_us, id)`` of the live posts matching the filters strictly
    after the ``before`` key, as ``recent_keys``, and only those the viewer may see: not by
    an author ``viewer_id`` blocked, public or in ``collectives`` if given, visible to
    ``visible_to = (viewer, is_admin)`` if given. So each key is a post of the page.

    Answered by an index, whatever the filters: the keyset is a row comparison on
    ``(created_at, id)``, so an ``asset_type`` filter reads the range of
    ``ix_posts_live_asset_time`` after the cursor, in order. ``sparse`` (tags few posts
    have, see ``count_upto``): the matches after the cursor are collected from the GIN
    index ``ix_posts_tags`` first (a materialized CTE: a bitmap, then a sort of those
    few), rather than walking the time index until enough of them turn up, which the
    planner may choose for a tag it cannot estimate and which reads every post when
    they are old. ``window``: only the newest ``window`` live posts after the cursor are
    examined (tags many posts have: their matches come early, and a tag the recent
    posts lack costs ``window`` index entries, not the table; see ``window_end``): the
    query reads FROM that window (newest first through ``ix_posts_live_time``) and stops
    at the ``limit``-th match, so a common tag costs about ``limit`` / its share rows.
    (Written as ``id IN (the window)``, the planner bitmap-scanned every post with the
    tag, then joined: docs/operations.md.)"""
    if authors is not None and not authors:
        return []
    shape = _KeysShape(
        window is not None, before is not None, authors is not None, viewer_id is not None,
        None if collectives is None else bool(collectives),
        None if visible_to is None else (visible_to[0] is not None, bool(visible_to[1])),
        asset_type is not None, bool(tags), sparse)
    params: dict[str, Any] = {"limit": limit, "window": window,
                              "authors": None if authors is None else list(authors),
                              "viewer": viewer_id, "asset_type": asset_type,
                              "tags": list(tags),
                              "collectives": sorted(collectives or ()),
                              "visible_viewer": visible_to[0] if visible_to else None}
    if before is not None:
        params["before_at"], params["before_id"] = from_us(before[0]), before[1]
    rows = session.connection().exec_driver_sql(_matching_keys_sql(shape), params)
    return [(int(row[0]), int(row[1])) for row in rows]


@dataclass(frozen=True)
class _KeysShape:
    """What ``matching_keys`` was asked, less the values: one statement per shape."""

    window: bool
    before: bool
    authors: bool
    viewer: bool
    collectives: bool | None  # None: not asked; False: public posts only
    visible: tuple[bool, bool] | None  # (a viewer, an admin), or not asked
    asset_type: bool
    tags: bool
    sparse: bool


@functools.lru_cache(maxsize=256)
def _matching_keys_sql(shape: _KeysShape) -> str:
    """``matching_keys``' statement for ``shape``, its values as named parameters,
    compiled once per process (built and compiled per call, it cost more CPU than
    Postgres took to answer it: docs/libraries.md)."""
    before = tuple_(bindparam("before_at", type_=Post.created_at.type),
                    bindparam("before_id", type_=Post.id.type))
    if shape.window:
        newest = select(Post.id, Post.created_at, Post.author_id, Post.collective_id,
                        Post.asset_type, Post.tags).where(Post.deleted_at.is_(None))
        if shape.before:
            newest = newest.where(tuple_(Post.created_at, Post.id) < before)
        newest = newest.order_by(Post.created_at.desc(), Post.id.desc()).limit(
            bindparam("window", type_=Integer))
        post: Any = newest.subquery("newest").c  # its columns, named as Post's
        query = select(_created_us(post).label("us"), post.id, post.created_at)
    else:
        post = Post
        query = select(_created_us().label("us"), Post.id, Post.created_at).where(
            Post.deleted_at.is_(None))
        if shape.before:
            query = query.where(tuple_(Post.created_at, Post.id) < before)
    ids = ARRAY(BigInteger)
    if shape.authors:
        query = query.where(post.author_id == any_(bindparam("authors", type_=ids)))
    if shape.viewer:
        query = query.where(not_blocked_by(bindparam("viewer", type_=BigInteger), post))
    if shape.collectives is not None:
        public = post.collective_id.is_(None)
        query = query.where(or_(public, post.collective_id == any_(
            bindparam("collectives", type_=ids))) if shape.collectives else public)
    if shape.visible is not None:
        viewer, admin = shape.visible
        query = query.where(can_see(bindparam("visible_viewer", type_=BigInteger)
                                    if viewer else None, admin, post=post))
    if shape.asset_type:
        query = query.where(post.asset_type == bindparam("asset_type",
                                                         type_=Post.asset_type.type))
    if shape.tags:
        query = query.where(post.tags.contains(bindparam("tags", type_=Post.tags.type)))
    limit = bindparam("limit", type_=Integer)
    if shape.sparse:
        found = query.cte("found").prefix_with("MATERIALIZED")
        query = (select(found.c.us, found.c.id)
                 .order_by(found.c.created_at.desc(), found.c.id.desc()).limit(limit))
    else:
        query = query.order_by(post.created_at.desc(), post.id.desc()).limit(limit)
    return str(query.compile(dialect=psycopg_dialect()))


def window_end(session: Session, before: tuple[int, int] | None,
               window: int) -> tuple[int, int] | None:
    """The key of the ``window``-th newest live post after the cursor (the last one a
    ``matching_keys(window=...)`` walk examined), None if fewer are left."""
    query = select(_created_us(), Post.id).where(Post.deleted_at.is_(None))
    if before is not None:
        query = query.where(tuple_(Post.created_at, Post.id)
                            < tuple_(from_us(before[0]), before[1]))
    query = query.order_by(Post.created_at.desc(), Post.id.desc()).offset(window - 1).limit(1)
    row = session.execute(query).first()
    return None if row is None else (int(row[0]), int(row[1]))


def count_upto(session: Session, asset_type: str | None, tags: Sequence[str],
               cap: int) -> int:
    """How many live posts match the filters, counted up to ``cap``: one index probe
    (``asset_type`` alone: the range of ``ix_posts_live_asset_time``; ``tags``: a bitmap
    of the GIN index, in the function ``posts_tagged_upto`` of migration 0009, whose
    planner settings rule out the sequential scan a ``LIMIT`` invites)."""
    if tags:
        return int(session.execute(select(func.posts_tagged_upto(
            cast(list(tags), Post.tags.type), cast(asset_type, String), cap))).scalar_one())
    query = _filtered(select(Post.id).where(Post.deleted_at.is_(None)), asset_type, tags)
    return int(session.execute(
        select(func.count()).select_from(query.limit(cap).subquery())).scalar_one())


def from_us(us: int) -> datetime:
    """Integer microseconds since the epoch (``_created_us``) as an exact datetime."""
    return _EPOCH + timedelta(microseconds=us)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def count_live(
    session: Session,
    authors: Sequence[int] | None = None,
    asset_type: str | None = None,
    tags: Sequence[str] = (),
    created_between: tuple[datetime, datetime] | None = None,
) -> int:
    query = select(func.count()).select_from(Post).where(Post.deleted_at.is_(None))
    if authors is not None:
        if not authors:
            return 0
        query = query.where(Post.author_id.in_(list(authors)))
    if created_between is not None:
        query = query.where(Post.created_at.between(*created_between))
    query = _filtered(query, asset_type, tags)
    return int(session.execute(query).scalar_one())


def count_live_grouped(
    session: Session,
    authors: Sequence[int] | None = None,
    asset_type: str | None = None,
    tags: Sequence[str] = (),
    visible_to: tuple[int | None, bool] | None = None,
    unblocked_for: int | None = None,
) -> tuple[int, dict[int, int]]:
    """Live posts matching the filters (and that ``visible_to`` may see, if given; not by
    an author ``unblocked_for`` blocked, if given), as (public ones, {collective id: its
    ones})."""
    if authors is not None and not authors:
        return 0, {}
    query = (select(Post.collective_id, func.count()).where(Post.deleted_at.is_(None))
             .group_by(Post.collective_id))
    if visible_to is not None:
        query = query.where(can_see(*visible_to))
    if unblocked_for is not None:
        query = query.where(not_blocked_by(unblocked_for))
    if authors is not None:
        query = query.where(Post.author_id.in_(list(authors)))
    return grouped(session.execute(_filtered(query, asset_type, tags)))


def grouped(rows) -> tuple[int, dict[int, int]]:
    """``(collective_id, n)`` rows as (public, {collective id: n})."""
    public, per = 0, {}
    for collective_id, n in rows:
        if collective_id is None:
            public = int(n)
        else:
            per[int(collective_id)] = int(n)
    return public, per


@dataclass(frozen=True)
class Engagement:
    id: int
    created_at: datetime
    like_count: int
    comment_count: int
    view_count: int
    is_featured: bool


def engagement_of(session: Session, post_id: int) -> Engagement | None:
    row = session.execute(
        select(Post.id, Post.created_at, Post.like_count, Post.comment_count,
               Post.view_count, Post.is_featured)
        .where(Post.id == post_id, Post.deleted_at.is_(None))
    ).first()
    return None if row is None else Engagement(*row)


def author_recent_keys(
    session: Session, author_ids: Sequence[int], per_author: int
) -> dict[int, list[tuple[int, int]]]:
    """For each author, the newest ``per_author`` live ``(created_at_us, id)`` keys."""
    if not author_ids:
        return {}
    us = _created_us()
    ranked = (
        select(
            Post.author_id,
            us.label("ts"),
            Post.id,
            func.row_number()
            .over(partition_by=Post.author_id,
                  order_by=(Post.created_at.desc(), Post.id.desc()))
            .label("rn"),
        )
        .where(Post.author_id.in_(list(author_ids)), Post.deleted_at.is_(None))
        .subquery()
    )
    out: dict[int, list[tuple[int, int]]] = {a: [] for a in author_ids}
    rows = session.execute(
        select(ranked.c.author_id, ranked.c.ts, ranked.c.id)
        .where(ranked.c.rn <= per_author)
        .order_by(ranked.c.author_id, ranked.c.ts.desc(), ranked.c.id.desc())
    )
    for author, ts, pid in rows:
        out[int(author)].append((int(ts), int(pid)))
    return out


def _created_us(post: Any = Post):
    """``created_at`` as integer microseconds since the epoch (exact: below 2^53)."""
    # The factor as a literal: a statement compiled once (``_matching_keys_sql``) has no
    # value to bind for it.
    return func.floor(func.extract("epoch", post.created_at) * literal_column("1000000")
                      ).cast(Post.id.type)


def view_row(session: Session, post_id: int, viewer_id: int) -> PostView | None:
    return session.get(PostView, (post_id, viewer_id))
