"""The community feed's use cases (API section 3), and the post writes the personalized
feed (section 4) shares: plain functions of the service's state (``AppState``), called by
the routes in ``service/community_feed.py`` (and ``service/ranked_feed.py`` for hearts
and collective membership).

Writes: each is one unit of work: Postgres rows and counters first, the community feed's
cache changes in the same outbox entry, then (after commit) a best-effort re-score of the
post in the trending set (see ``cache/community_feed.py`` for how stale that can get).
They raise ``NotFound`` for unknown or deleted posts, ``Forbidden`` when the caller may
not delete a post. A post with a ``collective_id`` exists only for that collective's
members and for admins; for everyone else its endpoints answer ``NotFound`` (checked
against Postgres in the write's own transaction). A like is a heart (section 4):
``like_post`` also bumps the liker's personalized-feed version in the same transaction,
whichever endpoint the like came through. A like (DESIGN rule 8) is one statement (the
visibility check, the like row, the counter and every version bump) plus the outbox
row, then one pipeline: the changes' apply, with the re-score riding in it at the
reference time the process saw last (``cf.Rescore``; a moved reference costs one round
trip more, once per rebuild).

Pages (``feed_page``): the order comes from Redis sorted sets (``cache/community_feed.py``;
the walk's first read rides in the pipeline of the page's count), the posts from their
cached entities and the viewer's likes set (``cache/posts.py``: one pipeline per chunk of
ids, filters, visibility and blocked authors applied on the way out; a trending page whose
snapshot range this process read before sends its first chunk's post reads in the count's
pipeline, ``Ahead``: one round trip), and the document is
assembled from their bytes (``FeedOut`` stays the contract). With Redis down, the same
order comes from Postgres (keyset queries; for trending, the walk's snapshot row) and the
posts from one query per chunk (``storage.posts.load_page``), rendered the same way, so
answers are identical. The walk itself (sources, visibility, the scan
budget) is ``service/community_feed_walk.py``; cursors ``service/community_feed_cursor.py``.

Filters (``asset_type``, ``tags``): a filter no live post matches is answered by its
probe (``posts.count_upto``, cached in the counts hash: one round trip warm, one index
probe cold): an empty last page, ``total_count`` 0, nothing walked. A filtered
``recent`` or ``following`` walk is read from a Postgres index
(``FilteredSource``: ``ix_posts_live_asset_time`` or the GIN ``ix_posts_tags``, keyset
after the cursor, visibility and blocked authors in the same statement) when the filter
is an asset type alone (``ix_posts_live_asset_time``: exact) or tags fewer than
``SPARSE_TAGS`` posts have (their GIN matches collected, then sorted), not from the
sorted sets, which hold every post. Common tags on ``recent``: one statement over the
newest ``SCAN_BUDGET`` posts after the cursor (the time index), ``has_more`` and a cursor
at that window's end if it held too few. Common tags on ``following`` and every
filtered ``trending`` walk read the feed's own order and keep the matching posts,
within the scan budget.

``total_count`` is the cached count grouped by collective, summed over what the viewer
may see, less the posts of the authors the viewer blocked (pages never list them): that
part is counted per blocked set and cached beside the count, read in the same pipeline
(see ``_viewer_total``), so a warm page costs what it costs anyone.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from sqlalchemy.orm import Session

from cache import community_feed as cf
from cache import posts as cache_posts
from cache import ranked_feed, stats
from cache.client import NO_VALUE, CacheUnavailable
from cache.versioned import Change
from service import community_feed_walk as walk
from service.bootstrap import AppState
from service.community_feed_cursor import decode_cursor, encode_cursor, filters_digest
from service.community_feed_walk import (
    PUBLIC,
    FilteredSource,
    FollowingSource,
    Key,
    RecentSource,
    Source,
    TrendingSource,
    Visibility,
)
from service.errors import ApiError, Forbidden, NotFound
from service.schemas import post_fields
from storage import community_feed as cf_sql
from storage import posts, profiles
from storage.models import Comment, Post
from storage.ranked_feed import collective_exists

log = logging.getLogger(__name__)

PATH = cf.PATH
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# Up to this many posts with a page's tags, their walk collects them from the GIN index
# and sorts them (work: these few); from it on, the page walks the feed's order within
# the scan budget (common tags: matches come quickly; the budget bounds a common tag the
# recent posts lack, which an unbounded time-index walk would read to its end): for
# ``recent`` in one statement over the newest SCAN_BUDGET posts after the cursor.
SPARSE_TAGS = 1000


def created_us(created_at: datetime) -> int:
    """``created_at`` as exact integer microseconds since the epoch."""
    if created_at.tzinfo is None:
        created_at = created_at.replace(tzinfo=UTC)
    return (created_at - EPOCH) // timedelta(microseconds=1)


def post_json(row: posts.PostRow) -> dict[str, Any]:
    """A post as the community feed shows it (``PostOut``)."""
    post = row.post
    return {**post_fields(lambda name: getattr(post, name), row.author),
            "is_liked_by_viewer": row.liked}


# --- writes ---------------------------------------------------------------------------------


def _visible(session: Any, post_id: int, user_id: int | None, is_admin: bool) -> Post:
    post = posts.get_visible_post(session, post_id, user_id, is_admin)
    if post is None:
        raise NotFound("Post not found")
    return post


def create_post(app: AppState, author_id: int, is_admin: bool, fields: dict[str, Any]
                ) -> dict[str, Any]:
    """Create a post by ``author_id`` from ``PostIn`` fields; returns it as ``PostOut``.

    A ``collective_id`` must name a collective the author belongs to (admins: any), an
    ``inspired_by_post_id`` a live post the author can see (share-locked until commit, so
    it cannot be deleted meanwhile); else ``ApiError`` (400) naming the field.
    """
    collective_id = fields.get("collective_id")
    if collective_id is not None:
        with app.db.read() as session:
            if not collective_exists(session, collective_id):
                raise ApiError("Unknown collective", code="validation_error",
                               details={"collective_id": ["Unknown collective."]})
            if not is_admin and collective_id not in posts.collectives_of(session, author_id):
                raise ApiError("Not a member of this collective", code="validation_error",
                               details={"collective_id": ["Join the collective to post in it."]})
    fields = {**fields, "tags": sorted(set(fields.get("tags") or []))}
    post = _create_post(app, author_id, is_admin, fields)
    with app.db.read() as session:
        row = posts.load_page(session, [post.id], author_id).get(post.id)
        if row is None:  # deleted in between: still report what was created
            row = posts.PostRow(post, profiles.get_profile(session, post.author_id), False)
    return post_json(row)


def _create_post(app: AppState, author_id: int, is_admin: bool, fields: dict[str, Any]
                 ) -> Post:
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
    _rescore(app, post.id, new=True)
    return post


def delete_post(app: AppState, post_id: int, user_id: int, is_admin: bool = False) -> None:
    """Soft delete (author or admin). Deleting an already deleted post is a 404, and so
    is a post the caller may not see (unless they wrote it)."""
    ck = cf.CommunityKeys(app.cache.keys)
    with app.uow() as uow:
        post = posts.get_live_post(uow.session, post_id)
        if post is None:
            raise NotFound("Post not found")
        if post.author_id != user_id and not is_admin:
            if posts.get_visible_post(uow.session, post_id, user_id) is None:
                raise NotFound("Post not found")
            raise Forbidden("Only the author or an admin may delete this post")
        deleted = posts.soft_delete(uow.session, post_id, [cache_posts.scope(post_id).row_name])
        if not deleted.changed:
            raise NotFound("Post not found")
        cf.post_deleted(uow.change(cf.posts_scope()),
                        uow.change(cf.author_scope(post.author_id)), ck, post_id,
                        post.author_id)
        _post_change(app, uow, post_id, deleted, deleted=True)
        uow.commit()
    _unrank(app, post_id)


def like_post(app: AppState, user_id: int, post_id: int, liked: bool,
              is_admin: bool = False) -> bool:
    """Like or unlike; True if the like row changed (idempotent otherwise).

    A change bumps the liker's personalized-feed version in the same transaction, so
    their next personalized page reflects it. Raises ``NotFound`` (also for a post the
    user may not see).
    """
    likes = cache_posts.likes_scope(user_id).row_name
    calc = ranked_feed.scope(user_id)
    with app.uow() as uow:
        # Visibility checked and the liker's calc version bumped by the like's own
        # statement (after the post's and their likes set's versions, the order
        # ``ranked_feed.touch`` took them in).
        counted = posts.set_like(uow.session, post_id, user_id, liked,
                                 [cache_posts.scope(post_id).row_name, likes, calc.row_name],
                                 is_admin)
        if counted is None:
            raise NotFound("Post not found")
        if not counted.changed:
            return False  # rolled back: nothing changed, no version moved
        if calc.row_name in counted.versions:
            uow.adopt(Change(calc, counted.versions[calc.row_name], []))
        else:
            ranked_feed.touch(uow, user_id)
        _post_change(app, uow, post_id, counted, like_count=counted.count)
        if likes in counted.versions:
            keys = app.cache.keys
            cache_posts.on_like(
                cache_posts.adopt_likes(uow, keys, user_id, counted.versions[likes]),
                keys, user_id, post_id, liked)
        # The re-score rides in the apply pipeline: the engagement the like's own
        # statement returned, at the reference time this process saw last.
        rider = _rescore_rider(app, post_id, counted.after)
        if rider is not None:
            uow.ride(rider)
        uow.commit()
    if rider is None or rider.moved is not None:  # no reference known, or it moved
        _rescore(app, post_id, engagement=counted.after, ref=rider and rider.moved)
    return True


def add_comment(app: AppState, user_id: int, post_id: int, body: str,
                is_admin: bool = False) -> Comment:
    """Add a comment (counted in trending). Raises ``NotFound``."""
    with app.uow() as uow:
        _visible(uow.session, post_id, user_id, is_admin)
        comment, counted = posts.add_comment(uow.session, post_id, user_id, body,
                                             [cache_posts.scope(post_id).row_name])
        _post_change(app, uow, post_id, counted, comment_count=counted.count)
        uow.commit()
        _rescore(app, post_id, session=uow.session)
    return comment


def record_view(app: AppState, user_id: int, post_id: int, is_admin: bool = False) -> bool:
    """Count a view unless this viewer had one counted in the last 30 minutes. Raises
    ``NotFound``."""
    with app.uow() as uow:
        _visible(uow.session, post_id, user_id, is_admin)
        counted = posts.record_view(uow.session, post_id, user_id,
                                    version_names=[cache_posts.scope(post_id).row_name])
        _post_change(app, uow, post_id, counted, view_count=counted.count)
        uow.commit()
        if counted.changed:
            _rescore(app, post_id, session=uow.session)
    return counted.changed


def _post_change(app: AppState, uow: Any, post_id: int, counted: posts.Counted,
                 deleted: bool = False, **counts: int) -> None:
    """Queue, in ``uow``, the post entity's change of a counted write (its version bumped
    by the write's statement): its counters set in place, or the entity dropped."""
    version = counted.versions.get(cache_posts.scope(post_id).row_name)
    if version is None:
        return
    keys = app.cache.keys
    change = cache_posts.adopt(uow, keys, post_id, version)
    if deleted:
        cache_posts.on_deleted(change, keys, post_id)
    else:
        cache_posts.on_counts(change, keys, post_id, **counts)


def set_membership(app: AppState, uow: Any, user_id: int, collective_id: int,
                   member: bool) -> None:
    """Queue, in ``uow``, the cache change of a committed join (``member``) or leave: the
    user's cached collectives (their next community page is filtered with it)."""
    cf.membership_changed(uow.change(cf.colls_scope(user_id)),
                          cf.CommunityKeys(app.cache.keys), user_id, collective_id, member)


def set_follow(app: AppState, user_id: int, followee_id: int, following: bool) -> bool:
    """Follow or unfollow; True if it changed. Raises ``ApiError`` (``self_follow``) for
    oneself."""
    if followee_id == user_id:
        raise ApiError("You cannot follow yourself", code="self_follow")
    ck = cf.CommunityKeys(app.cache.keys)
    with app.uow() as uow:
        changed = posts.set_follow(uow.session, user_id, followee_id, following)
        if changed:
            cf.follow_changed(uow.change(cf.follows_scope(user_id)), ck, user_id,
                              followee_id, following)
        uow.commit()
    return changed


def engagement(app: AppState, post_id: int, viewer_id: int | None,
               is_admin: bool = False) -> dict[str, Any]:
    """Counts of a live post and whether the viewer likes it. Raises ``NotFound``."""
    with app.db.read() as session:
        counts = posts.post_counts(session, post_id, viewer_id, is_admin)
        if counts is None:
            raise NotFound("Post not found")
        liked = viewer_id is not None and posts.is_liked(session, post_id, viewer_id)
    likes, comments, views = counts
    return {"like_count": likes, "comment_count": comments, "view_count": views,
            "is_liked": liked}


# --- trending upkeep (best effort; the scheduled rebuild repairs what this misses) --------


REF_HINT = "trending_ref"  # AppState.hints: the trending set's reference time seen last


def _score_at(eng: posts.Engagement | None, ref: str) -> int | None:
    if eng is None:
        return None
    return cf.trending_score(eng.like_count, eng.comment_count, eng.view_count,
                             eng.is_featured, eng.created_at.timestamp(), float(ref))


def _rescore_rider(app: AppState, post_id: int, engagement: posts.LikeResult | None
                   ) -> cf.Rescore | None:
    """The committed write's re-score as a rider of its apply pipeline, at the reference
    time this process saw last (None: none seen yet, or no engagement)."""
    ref = app.hints.get(REF_HINT)
    if ref is None or engagement is None:
        return None
    return cf.Rescore(app.cache.keys, post_id, _score_at(engagement.engagement, ref), ref)


def _rescore(app: AppState, post_id: int, new: bool = False,
             session: Session | None = None,
             engagement: posts.LikeResult | None = None, ref: str | None = None) -> None:
    """Re-score a post in the cached trending set from its committed engagement.

    ``session``: the committed unit of work's, read again in a new transaction (what a
    fresh session would see) without checking out and pinging another connection.
    ``engagement``: the engagement a committed write's statement returned (no read).
    ``ref``: the set's reference time as a rider just read it ('' : no set), else read.
    """
    try:
        if ref is None:
            ref = cf.trending_ref(app.cache, PATH)
        app.hints[REF_HINT] = ref or None
        if not ref:
            return  # no trending set: the next read or rebuild computes it whole
        if engagement is not None:
            eng = engagement.engagement
        elif session is not None:
            eng = posts.engagement_of(session, post_id)
        else:
            with app.db.read() as own:
                eng = posts.engagement_of(own, post_id)
        cf.rescore(app.cache, PATH, post_id, _score_at(eng, ref), ref,
                   new=new and eng is not None)
    except CacheUnavailable:
        log.debug("trending re-score of post %s skipped: cache unavailable", post_id)


def _unrank(app: AppState, post_id: int) -> None:
    try:
        ref = cf.trending_ref(app.cache, PATH)
        if ref is not None:
            cf.rescore(app.cache, PATH, post_id, None, ref)
    except CacheUnavailable:
        log.debug("trending removal of post %s skipped: cache unavailable", post_id)


# --- the page ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Ahead:
    """A trending page's first read known before its count is: the remembered range
    (``prefetch``'s answer) and the ids its loader will read first, whose entity reads
    (``riders``, after the copy's existence check) ride with the count."""

    prefetch: cf.Prefetch
    range: cf.KeyRange
    ids: list[int]
    riders: tuple[tuple[Any, ...], ...]


VIEWER_COLLS_HINT = "cf_viewer_collectives"  # AppState.hints: {viewer: their collectives}


def _ahead(app: AppState, source: Source, after: Key | None, n: int, limit: int,
           viewer: int | None, is_admin: bool) -> Ahead | None:
    """The page's ``Ahead`` if ``source`` (a trending walk) remembers the range after
    ``after`` (``n`` keys); None otherwise. The visibility it plans with is the viewer's
    on their last page (public posts only if unknown): if it was wrong, the loader's
    first read does not match and is sent on its own, as without ``Ahead``."""
    assert isinstance(source, TrendingSource)
    rng = source.remembered(after, n)
    planned = source.prefetch(after, n)
    if rng is None or rng.entries is None or planned is None:
        return None
    if is_admin:
        sees = Visibility(None).sees
    elif viewer is None:
        sees = PUBLIC.sees
    else:
        sees = app.hints.get(VIEWER_COLLS_HINT, {}).get(viewer, PUBLIC).sees
    ids = walk.first_read(app, [k[-1] for k in rng.entries], sees, limit + 1)[0]
    riders = (source.exists_command(), *cache_posts.page_commands(app, ids, viewer))
    return Ahead(planned, rng, ids, riders)


def _remember_collectives(app: AppState, viewer: int, vis: Visibility) -> None:
    hints = app.hints.setdefault(VIEWER_COLLS_HINT, {})
    if hints.get(viewer) != vis:
        if len(hints) >= FOLLOWEES_HINT_USERS:
            hints.clear()
        hints[viewer] = vis


def _page_state(app: AppState, field: str, viewer: int | None, is_admin: bool,
                prefetch: cf.Prefetch | None = None, pointer: bool = False,
                follows: bool = False, riders: Sequence[tuple[Any, ...]] = ()
                ) -> tuple[Visibility, cf.PageState | None]:
    """The viewer's visibility and the page's cached count state (None: Redis down),
    read together in one pipeline (with the viewer's blocked authors, the count of
    their posts, the walk's first read, ``prefetch``, and with ``follows`` the version
    copy of their followees set). With Redis down, Postgres applies the rule in the
    page's own queries (no statement more for the member set)."""
    member_of = viewer if viewer is not None and not is_admin else None
    try:
        page = cf.read_count(app.cache, PATH, field, member_of, viewer, prefetch, pointer,
                             viewer if follows else None, riders)
    except CacheUnavailable:
        page = None
    if is_admin:
        return Visibility(None), page
    if member_of is None:
        return PUBLIC, page
    if page is None:
        return Visibility(None, sql=(member_of, False)), None
    colls = page.collectives
    if colls is NO_VALUE:
        colls = cf.collectives(app, member_of)
    return Visibility.of(colls), page


def _blocked(app: AppState, viewer: int | None, page: cf.PageState | None) -> frozenset[int]:
    """The authors the viewer blocked, as read with the page's count (filled on a miss);
    empty for anonymous callers and with Redis down (Postgres applies the rule then)."""
    if page is None or viewer is None:
        return frozenset()
    blocked = page.blocked
    if blocked is NO_VALUE or blocked is None:
        blocked = cf.blocked(app, viewer)
    return blocked


def _viewer_total(app: AppState, field: str, page: cf.PageState | None, vis: Visibility,
                  count: Callable[[Sequence[int] | None], cf.Grouped],
                  viewer: int | None, blocked: frozenset[int]) -> int:
    """``total_count`` as the viewer sees it: the cached grouped count (computed and
    cached on a miss) summed over what they may see, less the posts of the authors they
    blocked (which pages never list). That part is counted once per blocked set (its
    digest rides with the value) in the counts hash, read in the page's count pipeline,
    and costs an index range per blocked author (``ix_posts_author_time``) when computed.
    With Redis down (``page`` None), ``count`` excluded them in its own statement."""
    total = vis.total(*cf.grouped_count(app, field, page, lambda: count(None)))
    if page is None or viewer is None or not blocked:
        return total
    value = cf.blocked_grouped_count(app, viewer, field, page, blocked, count)
    return max(total - vis.total(*value), 0)


def _page_json(posts_json: Sequence[bytes], total: int, next_cursor: str | None) -> bytes:
    """``FeedOut`` assembled from the posts' cached bytes (no schema dump per post)."""
    return (b'{"posts":[' + b",".join(posts_json) + b"]," + orjson.dumps(
        {"total_count": total, "has_more": next_cursor is not None,
         "next_cursor": next_cursor})[1:])


def _no_match_page() -> bytes:
    return _page_json([], 0, None)


def _matches(app: AppState, asset_type: str | None, tags: list[str]) -> int | None:
    """How many live posts match the filters, up to ``SPARSE_TAGS`` (None: no filter):
    the cached probe (one round trip), else one index probe, cached under the version it
    was read under (``cf.read_probe``: bounded, a stream of made-up tags costs a probe
    each past the cap, not memory). 0 answers the page: nothing walked."""
    if not (asset_type or tags):
        return None
    field = cf.probe_field(asset_type, tags)
    version = None
    try:
        cached, version = cf.read_probe(app.cache, PATH, field)
        if cached is not None:
            return cached
    except CacheUnavailable:
        pass
    with app.db.read() as session:
        found = posts.count_upto(session, asset_type, tags, SPARSE_TAGS)
    if version is not None:
        with contextlib.suppress(CacheUnavailable):
            cf.write_count(app.cache, PATH, field, str(found), version,
                           app.settings.idle_ttl, cap=cf.PROBE_FIELDS_MAX)
    return found


FOLLOWEES_HINT = "cf_followees"  # AppState.hints: {viewer: (version copy, followees)}
FOLLOWEES_HINT_USERS = 10_000  # past it the hints start over (a dict, not an LRU)


def _followees(app: AppState, viewer: int) -> tuple[list[int], str | None, bool]:
    """The viewer's followees: those this process read last under a version copy, to be
    confirmed by the copy read with the page's count (``guessed`` True: no round trip
    of their own), else the cached set with its copy (one round trip, remembered).
    Returns (followees, the version copy or None, guessed)."""
    hints = app.hints.setdefault(FOLLOWEES_HINT, {})
    got = hints.get(viewer)
    if got is not None:
        return got[1], got[0], True
    authors, version = cf.followees_versioned(app, viewer)
    if version is not None:
        if len(hints) >= FOLLOWEES_HINT_USERS:
            hints.clear()
        hints[viewer] = (version, authors)
    return authors, version, False


def feed_page(app: AppState, viewer: int | None, is_admin: bool, feed_type: str,
              cursor: str | None, limit: int, asset_type: str | None, tags: list[str]
              ) -> bytes:
    """One page of ``feed_type`` (``trending``, ``recent``, ``following``: needs a
    ``viewer``) after ``cursor``, as ``FeedOut``'s JSON document. ``tags``: parsed (sorted, unique).
    Raises ``BadCursor`` for a cursor that is not one of this feed's and filters'."""
    query = filters_digest(asset_type, tags)
    data = decode_cursor(cursor, feed_type, query) if cursor else None
    after: Key | None = tuple(data["k"]) if data else None  # type: ignore[assignment]
    matches = _matches(app, asset_type, tags)
    if matches == 0:
        stats.count(PATH + ":" + feed_type, "index")
        return _no_match_page()
    filters = (asset_type, tags)
    extra: dict[str, Any] = {}

    def unblocked() -> int | None:  # Redis down: counts exclude blocked authors in SQL
        return viewer if page is None else None

    authors: list[int] | None = None
    follows_version, guessed = None, False

    def following(authors: list[int]) -> tuple[Source, Any, str]:
        def count(only: Sequence[int] | None) -> cf.Grouped:
            mine = authors if only is None else sorted(set(authors) & set(only))
            with app.db.read() as session:
                return posts.count_live_grouped(session, mine, *filters, vis.sql,
                                                unblocked())

        digest = hashlib.sha1(orjson.dumps(authors)).hexdigest()[:16]
        return (FollowingSource(app, authors), count,
                cf.count_field("g", "f", viewer, digest, asset_type, tags))

    if feed_type == "recent":
        source: Source = RecentSource(app)

        def count(only: Sequence[int] | None) -> cf.Grouped:
            with app.db.read() as session:
                return posts.count_live_grouped(session, only, *filters, vis.sql,
                                                unblocked())

        field = cf.count_field("g", "r", asset_type, tags)
    elif feed_type == "following":
        authors, follows_version, guessed = _followees(app, viewer)  # type: ignore[arg-type]
        source, count, field = following(authors)
    else:
        # A first page guesses the shared snapshot this process saw last and checks the
        # guess against the pointer read with the page's count (one round trip less).
        trend = TrendingSource.resume(app, data) if data else (
            TrendingSource.guess(app) or TrendingSource.start(app))
        source = trend
        extra = trend.cursor_fields()

        def count(only: Sequence[int] | None) -> cf.Grouped:
            with app.db.read() as session:
                return cf_sql.count_snapshot_grouped(session, trend.sid, *filters, vis.sql,
                                                     unblocked(), only)

        field = cf.count_field("g", "t", trend.sid, asset_type, tags)
    sparse = bool(tags) and (matches or 0) < SPARSE_TAGS
    indexed = feed_type != "trending" and (sparse or (asset_type and not tags))
    window = feed_type == "recent" and bool(tags)  # common tags: the newest posts, a window
    filtered = bool(asset_type or tags)
    # The walk's first Redis read rides with the count (an index walk reads Postgres).
    first = walk.first_chunk(source, limit, filtered, hidden=not is_admin)
    prefetch = None if indexed or window else source.prefetch(after, first)
    pointer = feed_type == "trending" and not data
    # A trending range this process read before is not read again: the page's entities
    # ride with its count instead (one round trip), for the ids its loader will read
    # first were the viewer's visibility what it was on their last page.
    ahead = _ahead(app, source, after, first, limit, viewer, is_admin) if (
        feed_type == "trending" and prefetch is not None) else None
    if ahead is not None:
        prefetch = None
    vis, page = _page_state(app, field, viewer, is_admin, prefetch, pointer, guessed,
                            ahead.riders if ahead is not None else ())
    if guessed and (page is None or page.follows_version != follows_version):
        # The followees this process saw last are not the set's any more (or Redis is
        # down: they cannot be confirmed): read them, and the page's state, again.
        app.hints[FOLLOWEES_HINT].pop(viewer, None)
        authors, follows_version, _ = _followees(app, viewer)  # type: ignore[arg-type]
        source, count, field = following(authors)
        prefetch = None if indexed or window else source.prefetch(after, first)
        vis, page = _page_state(app, field, viewer, is_admin, prefetch)
    if pointer and not trend.confirmed(page):  # the guess was wrong (or Redis is down)
        ahead = None
        trend = TrendingSource.start(app)
        source, extra = trend, trend.cursor_fields()
        field = cf.count_field("g", "t", trend.sid, asset_type, tags)
        prefetch = source.prefetch(after, first)
        vis, page = _page_state(app, field, viewer, is_admin, prefetch)
    if page is not None and prefetch is not None and page.ranges is not None:
        source.prefetched = (prefetch, page.ranges)
        if feed_type == "trending":
            trend.remember(prefetch.after, prefetch.n, page.ranges[0])
    if page is not None and viewer is not None:
        _remember_collectives(app, viewer, vis)
    if indexed:
        source = FilteredSource(app, authors, asset_type, tags, viewer, vis, sparse=sparse)
    elif window:
        source = FilteredSource(app, None, asset_type, tags, viewer, vis,
                                window=walk.SCAN_BUDGET)
    blocked = _blocked(app, viewer, page)
    # An exact source applied the filters in its own statement: not checked again.
    load = walk.PostLoader(app, viewer, vis, blocked, None if source.exact else asset_type,
                           () if source.exact else tags, cached=page is not None)
    load.want = limit + 1  # the first chunk may hold more keys than the page needs
    if ahead is not None and page is not None and page.riders and page.riders[0]:
        # The copy still exists: its remembered range is this page's first read.
        source.prefetched = (ahead.prefetch, [ahead.range])
        load.ahead = (ahead.ids, page.riders[1:])
    rows, resume = walk.collect(source, after, limit, vis, filtered, load,
                                None if indexed or window else first)
    stats.count(PATH + ":" + feed_type, source.outcome)
    next_cursor = None
    if resume is not None:
        next_cursor = encode_cursor({"f": feed_type, "q": query, "k": list(resume), **extra})
    return _page_json([post.community_json(post.id in load.liked) for _, post in rows],
                      _viewer_total(app, field, page, vis, count, viewer, blocked),
                      next_cursor)
