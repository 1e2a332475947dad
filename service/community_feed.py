"""Community feed (API section 3): posts, likes, views, comments, follows, and the
``trending`` / ``recent`` / ``following`` cursor pages.

Pages: the order comes from Redis sorted sets (``cache/community_feed.py``), the rows
from one Postgres query per chunk of ids (``storage.posts.load_page``: live posts only,
filters applied, author names joined, the viewer's likes for the whole chunk). With Redis
down, the same order comes from Postgres (keyset queries; for trending, the walk's
snapshot row), so answers are identical.

Filters (``asset_type``, ``tags``): a filter no live post matches is answered by one
index probe (``posts.count_upto``): an empty last page, ``total_count`` 0, nothing walked
or cached. A filtered ``recent`` or ``following`` walk is read from a Postgres index
(``FilteredSource``: ``ix_posts_live_asset_time`` or the GIN ``ix_posts_tags``, keyset
after the cursor, visibility and blocked authors in the same statement) when the filter
is an asset type alone (``ix_posts_live_asset_time``: exact) or tags fewer than
``SPARSE_TAGS`` posts have (their GIN matches collected, then sorted), not from the
sorted sets, which hold every post. Common tags on ``recent``: one statement over the
newest ``SCAN_BUDGET`` posts after the cursor (the time index), ``has_more`` and a cursor
at that window's end if it held too few. Common tags on ``following`` and every
filtered ``trending`` walk read the feed's own order and keep the matching posts,
within the scan budget below.

Visibility: the sorted sets and cached counts hold every live post and are shared by all
viewers; a page keeps the rows the viewer may see (``posts_service.Visibility``: public
posts, plus their collectives' for members, all for admins), with the viewer's
collectives read from their cached set in the same pipeline as the page's count. A page
examines at most ``SCAN_BUDGET`` keys: a viewer who may see few of them gets what was
found, ``has_more`` true and a cursor after the last key examined. ``total_count`` is the
cached count grouped by collective, summed over what the viewer may see, less the posts
of the authors the viewer blocked (pages never list them): that part is counted per
blocked set and cached beside the count, read in the same pipeline (see
``_viewer_total``), so a warm page costs what it costs anyone.

Cursors are opaque: base64url of JSON ``{"v":1,"f":feed,"q":filters,"k":[score,id]}`` plus,
for trending, the walk's snapshot id ``s``. The ``(score, id)`` key is exact and total, so
a walk resumes strictly after the last post it returned: ``recent`` and ``following`` are
keysets on (created_at us, id); trending reads one immutable ranking snapshot, durable in
Postgres (service/community_trending.py), so flushes and outages cannot change it.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
from collections.abc import Callable, Sequence
from typing import Any

import orjson
from flask import Response, g
from marshmallow import Schema, fields, validate

from cache import community_feed as cf
from cache import stats
from cache.client import NO_VALUE, CacheUnavailable
from cache.lease import LeaseHeld, wait_for
from service import community_trending as trending
from service import posts_service
from service.api import Blueprint
from service.auth import login_optional, login_required
from service.errors import ApiError, Unauthorized
from service.fields import Id, UtcDateTime
from service.schemas import TOGGLE_CHANGED, PostFieldsOut, post_fields
from service.state import state
from storage import community_feed as cf_sql
from storage import posts, profiles
from storage.models import Collective

bp = Blueprint("community_feed", __name__, description="Community feed (section 3)")

PATH = "community_feed"
Key = tuple[int, int]  # (score, post id): the exact sort key of every feed


# --- schemas ------------------------------------------------------------------------------


class PostIn(Schema):
    title = fields.String(required=True, validate=validate.Length(1, 300))
    description = fields.String(load_default=None, allow_none=True,
                                validate=validate.Length(max=10_000))
    tags = fields.List(fields.String(validate=validate.Length(1, 50)), load_default=list,
                       validate=validate.Length(max=20))
    post_type = fields.String(load_default="post", validate=validate.Length(1, 50))
    asset_type = fields.String(load_default=None, allow_none=True,
                               validate=validate.Length(1, 50))
    asset_url = fields.String(load_default=None, allow_none=True,
                              validate=validate.Length(max=2000))
    collective_id = Id(load_default=None, allow_none=True)
    show_prompt = fields.Boolean(load_default=False)
    prompt = fields.String(load_default=None, allow_none=True,
                           validate=validate.Length(max=5000))
    inspired_by_post_id = Id(load_default=None, allow_none=True,
                             metadata={"description": "a live post the caller can see"})


class PostOut(PostFieldsOut):
    is_liked_by_viewer = fields.Boolean()


class FeedArgs(Schema):
    feed_type = fields.String(load_default="trending",
                              validate=validate.OneOf(["trending", "recent", "following"]))
    cursor = fields.String(load_default=None, validate=validate.Length(max=2000))
    limit = fields.Integer(load_default=20, validate=validate.Range(1, 50))
    asset_type = fields.String(load_default=None, validate=validate.Length(1, 50))
    tags = fields.String(load_default=None, validate=validate.Length(max=1100))


class FeedOut(Schema):
    posts = fields.List(fields.Nested(PostOut))
    total_count = fields.Integer()
    has_more = fields.Boolean()
    next_cursor = fields.String(allow_none=True)


class CommentIn(Schema):
    body = fields.String(required=True, validate=validate.Length(1, 10_000))


class CommentOut(Schema):
    id = fields.Integer()
    post_id = fields.Integer()
    author_id = fields.Integer()
    body = fields.String()
    created_at = UtcDateTime()


class LikedOut(Schema):
    liked = fields.Boolean(required=True, metadata={"description": TOGGLE_CHANGED})


class UnlikedOut(Schema):
    unliked = fields.Boolean(required=True, metadata={"description": TOGGLE_CHANGED})


class FollowingOut(Schema):
    following = fields.Boolean(required=True, metadata={"description": TOGGLE_CHANGED})


class EngagementOut(Schema):
    like_count = fields.Integer()
    comment_count = fields.Integer()
    view_count = fields.Integer()
    is_liked = fields.Boolean()


# --- write endpoints -----------------------------------------------------------------------


def _post_json(row: posts.PostRow) -> dict[str, Any]:
    post = row.post
    return {**post_fields(lambda name: getattr(post, name), row.author),
            "is_liked_by_viewer": row.liked}


@bp.route("/community/posts", methods=["POST"])
@login_required
@bp.arguments(PostIn)
@bp.response(201, PostOut)
def create_post(body):
    if body["collective_id"] is not None:
        with state().db.session() as session:
            if session.get(Collective, body["collective_id"]) is None:
                raise ApiError("Unknown collective", code="validation_error",
                               details={"collective_id": ["Unknown collective."]})
            if not g.user.is_admin and body["collective_id"] not in posts.collectives_of(
                    session, g.user.id):
                raise ApiError("Not a member of this collective", code="validation_error",
                               details={"collective_id": ["Join the collective to post in it."]})
    body["tags"] = sorted(set(body["tags"]))
    post = posts_service.create_post(g.user.id, is_admin=g.user.is_admin, **body)
    with state().db.session() as session:
        row = posts.load_page(session, [post.id], g.user.id).get(post.id)
        if row is None:  # deleted in between: still report what was created
            row = posts.PostRow(post, profiles.get_profile(session, post.author_id), False)
    return _post_json(row)


@bp.route("/community/posts/<id:post_id>", methods=["DELETE"])
@login_required
@bp.response(204)
def delete_post(post_id: int):
    posts_service.delete_post(post_id, g.user.id, g.user.is_admin)
    return Response(status=204)


@bp.route("/community/posts/<id:post_id>/like", methods=["POST"])
@login_required
@bp.response(200, LikedOut)
def like(post_id: int):
    """Like a post: ``{"liked": true}`` if this call added the like, ``false`` if the
    caller already liked it."""
    return {"liked": posts_service.like_post(g.user.id, post_id, True, g.user.is_admin)}


@bp.route("/community/posts/<id:post_id>/like", methods=["DELETE"])
@login_required
@bp.response(200, UnlikedOut)
def unlike(post_id: int):
    """Remove a like: ``{"unliked": true}`` if this call removed it, ``false`` if there
    was none."""
    return {"unliked": posts_service.like_post(g.user.id, post_id, False, g.user.is_admin)}


@bp.route("/community/posts/<id:post_id>/view", methods=["POST"])
@login_required
@bp.response(204)
def view(post_id: int):
    posts_service.record_view(g.user.id, post_id, g.user.is_admin)
    return Response(status=204)


@bp.route("/community/posts/<id:post_id>/comments", methods=["POST"])
@login_required
@bp.arguments(CommentIn)
@bp.response(201, CommentOut)
def comment(body, post_id: int):
    return posts_service.add_comment(g.user.id, post_id, body["body"], g.user.is_admin)


@bp.route("/community/posts/<id:post_id>/engagement", methods=["GET"])
@login_optional
@bp.response(200, EngagementOut)
def engagement(post_id: int):
    return posts_service.engagement(post_id, g.user.id if g.user else None,
                                    bool(g.user and g.user.is_admin))


def _follow(user_id: int, following: bool) -> dict[str, bool]:
    if user_id == g.user.id:
        raise ApiError("You cannot follow yourself", code="self_follow")
    return {"following": posts_service.set_follow(g.user.id, user_id, following)}


@bp.route("/community/users/<id:user_id>/follow", methods=["POST"])
@login_required
@bp.response(200, FollowingOut)
def follow(user_id: int):
    """Follow a user: ``{"following": true}`` if this call started following, ``false``
    if the caller already followed them."""
    return _follow(user_id, True)


@bp.route("/community/users/<id:user_id>/follow", methods=["DELETE"])
@login_required
@bp.response(200, FollowingOut)
def unfollow(user_id: int):
    """Unfollow a user: ``{"following": true}`` if this call stopped following (the answer
    says whether the call changed anything), ``false`` if the caller did not follow them."""
    return _follow(user_id, False)


# --- cursors -----------------------------------------------------------------------------


class BadCursor(ApiError):
    code = "invalid_cursor"

    def __init__(self) -> None:
        super().__init__("Invalid cursor", details={"cursor": ["Invalid or foreign cursor."]})


def encode_cursor(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(orjson.dumps({"v": 1, **data})).decode().rstrip("=")


def decode_cursor(raw: str, feed: str, query: str) -> dict[str, Any]:
    try:
        data = orjson.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
        key = data["k"]
        ok = (isinstance(data, dict) and data.get("v") == 1 and data.get("f") == feed
              and data.get("q") == query and isinstance(key, list) and len(key) == 2
              and all(type(x) is int and 0 <= x < 2**63 for x in key))
        if ok and feed == "trending":
            ok = type(data.get("s")) is int and 0 < data["s"] < 2**63
            floor = data.get("fl")
            ok = ok and (floor is None or (
                isinstance(floor, list) and len(floor) == 2
                and all(type(x) is int and 0 <= x < 2**63 for x in floor)))
    except (binascii.Error, ValueError, TypeError, KeyError, orjson.JSONDecodeError) as exc:
        raise BadCursor() from exc
    if not ok:
        raise BadCursor()
    return data


# --- ordered sources: next keys after a cursor ---------------------------------------------


class Source:
    """Yields the feed's keys in order, strictly after a key. ``exact``: every key it
    yields is a post of the page (filters and visibility applied by the source)."""

    outcome = "hit"
    exact = False

    def next_keys(self, after: Key | None, n: int) -> list[Key]:
        raise NotImplementedError


def _recent_pg(after: Key | None, n: int, authors: Sequence[int] | None = None) -> list[Key]:
    with state().db.session() as session:
        return posts.recent_keys(session, n, after, authors)


class RecentSource(Source):
    """The recent sorted set; past its (trimmed) end, the same keyset in Postgres."""

    def next_keys(self, after: Key | None, n: int) -> list[Key]:
        app = state()
        ck = cf.CommunityKeys(app.cache.keys)
        try:
            rng = cf.range_after(app.cache, PATH, [ck.recent], after, n)[0]
            if rng.entries is None:
                self.outcome = "miss"
                # If another request holds the lease, wait for its fill below.
                with contextlib.suppress(LeaseHeld):
                    self._fill(ck)
                rng = self._wait_for_fill(ck, after, n)
        except CacheUnavailable:
            self.outcome = "fallback"
            return _recent_pg(after, n)
        keys = rng.entries
        if len(keys) < n and not rng.complete:
            keys += _recent_pg(keys[-1] if keys else after, n - len(keys))
        return keys

    @staticmethod
    def _wait_for_fill(ck: cf.CommunityKeys, after: Key | None, n: int) -> cf.KeyRange:
        """The recent set once a fill (ours or a concurrent one) landed, polled for up to
        ``lease_wait_ms``: a stampede of misses costs one load, not one per request.
        Raises ``CacheUnavailable`` (-> Postgres) if it does not land in time."""
        app = state()

        def read() -> Any:
            rng = cf.range_after(app.cache, PATH, [ck.recent], after, n)[0]
            return NO_VALUE if rng.entries is None else rng

        rng = read()
        if rng is NO_VALUE:
            rng = wait_for(read, app.cache.lease_wait_ms)
        if rng is NO_VALUE:
            raise CacheUnavailable(PATH)
        return rng

    def _fill(self, ck: cf.CommunityKeys) -> None:
        app = state()
        size = app.settings.recent_cache_size

        def load() -> list[Key]:
            return _recent_pg(None, size + 1)

        def stage(pipe: Any, temps: dict[str, str], keys: list[Key]) -> None:
            cf.stage_sorted(pipe, temps[ck.recent], keys[:size], complete=len(keys) <= size)

        app.filler.fill(PATH, cf.posts_scope(), [ck.recent], load, stage, only_if_missing=True)


def followees_of(user_id: int) -> list[int]:
    """The user's followees: the cached set, filled from Postgres on a miss."""
    return cf.followees(state(), user_id)


class FollowingSource(Source):
    """Fan-out on read: merge the followees' author sets (see cache/community_feed.py)."""

    def __init__(self, followee_ids: list[int]) -> None:
        self.authors = followee_ids

    def next_keys(self, after: Key | None, n: int) -> list[Key]:
        if not self.authors:
            return []
        app = state()
        ck = cf.CommunityKeys(app.cache.keys)
        keys = [ck.author(a) for a in self.authors]
        try:
            ranges = cf.range_after(app.cache, PATH, keys, after, n)
            missing = [i for i, r in enumerate(ranges) if r.entries is None]
            if missing:
                self.outcome = "miss"
                self._fill([self.authors[i] for i in missing])
                ranges = cf.range_after(app.cache, PATH, keys, after, n)
                if any(r.entries is None for r in ranges):
                    raise CacheUnavailable(PATH)
        except CacheUnavailable:
            self.outcome = "fallback"
            return _recent_pg(after, n, self.authors)
        merged = sorted((k for r in ranges for k in r.entries or []), reverse=True)[:n]
        # An author set that was trimmed and ran out hides older posts below its last key.
        floor = max((r.entries[-1] if r.entries else after or (2**63, 0)
                     for r in ranges if not r.complete and len(r.entries or []) < n),
                    default=None)
        if floor is not None and (len(merged) < n or merged[-1] < floor):
            return _recent_pg(after, n, self.authors)
        return merged

    def _fill(self, authors: list[int]) -> None:
        cf.fill_author_sets(state(), authors)


class FilteredSource(Source):
    """A filtered ``recent`` or ``following`` walk, answered by a Postgres index
    (``posts.matching_keys``): the keys of the posts matching the filters that the viewer
    may see, newest first, in one keyset statement per chunk whatever the table's size
    (the sorted sets in Redis hold every post: walking them for a narrow filter read
    post after post). Outcome ``index``: no cache involved, Redis up or down alike."""

    outcome = "index"
    exact = True

    def __init__(self, authors: list[int] | None, asset_type: str | None,
                 tags: list[str], viewer: int | None,
                 vis: posts_service.Visibility, sparse: bool = False,
                 window: int | None = None) -> None:
        self.authors, self.asset_type, self.tags = authors, asset_type, tags
        self.viewer, self.vis, self.sparse, self.window = viewer, vis, sparse, window
        self.more: Key | None = None  # a short answer's resume key (its window's end)

    def next_keys(self, after: Key | None, n: int) -> list[Key]:
        vis, self.more = self.vis, None
        colls = None if vis.sql is not None or vis.collectives is None else vis.collectives
        with state().db.session() as session:
            keys = posts.matching_keys(
                session, n, after, authors=self.authors, asset_type=self.asset_type,
                tags=self.tags, viewer_id=self.viewer,
                collectives=None if colls is None else sorted(colls), visible_to=vis.sql,
                sparse=self.sparse, window=self.window)
            if self.window is not None and len(keys) < n:
                self.more = posts.window_end(session, after, self.window)
        return keys


class TrendingSource(Source):
    """One walk's ranking: its durable snapshot down to its floor, then its deep tail
    (see service/community_trending.py)."""

    def __init__(self, sid: int, floor: cf.Floor, outcome: str = "hit") -> None:
        self.sid, self.floor, self.outcome = sid, floor, outcome

    @classmethod
    def start(cls) -> TrendingSource:
        return cls(*trending.start_walk())

    @classmethod
    def resume(cls, data: dict[str, Any]) -> TrendingSource:
        floor = data.get("fl")
        return cls(data["s"], None if floor is None else (floor[0], floor[1]))

    def next_keys(self, after: Key | None, n: int) -> list[Key]:
        try:
            keys, outcome = trending.walk_after(self.sid, self.floor, after, n)
        except trending.UnknownSnapshot as exc:
            raise BadCursor() from exc
        if OUTCOME_RANK[outcome] > OUTCOME_RANK[self.outcome]:
            self.outcome = outcome
        return keys


OUTCOME_RANK = {"hit": 0, "miss": 1, "fallback": 2}


# --- the page ----------------------------------------------------------------------------


def _parse_tags(raw: str | None) -> list[str]:
    if raw is None:
        return []
    tags = sorted({t.strip() for t in raw.split(",") if t.strip()})
    if len(tags) > 20 or any(len(t) > 50 for t in tags):
        raise ApiError("Invalid request", code="validation_error",
                       details={"tags": ["At most 20 tags of at most 50 characters."]})
    return tags


# Keys one page may examine: a viewer who may see few of the posts (or a narrow filter)
# gets the posts found within it, ``has_more`` true and a cursor to go on from there.
SCAN_BUDGET = 2000


def collect(source: Source, after: Key | None, limit: int, viewer: int | None,
            vis: posts_service.Visibility, asset_type: str | None, tags: list[str]
            ) -> tuple[list[tuple[Key, Any]], Key | None]:
    """Walk ``source`` after ``after`` until ``limit + 1`` live matching posts the viewer
    may see are found, or ``SCAN_BUDGET`` keys were examined; returns (page rows with
    their keys, the key to resume after, None if the walk reached its end)."""
    found: list[tuple[Key, Any]] = []
    chunk = limit + 1 if source.exact or not (asset_type or tags) else 4 * (limit + 1)
    cursor, scanned = after, 0
    while True:
        keys = source.next_keys(cursor, chunk)
        if keys:
            with state().db.session() as session:
                rows = posts.load_page(session, [k[-1] for k in keys], viewer, asset_type,
                                       tags, vis.sql)
            found += [(k, rows[k[-1]]) for k in keys
                      if k[-1] in rows and vis.sees(rows[k[-1]].post.collective_id)]
            scanned += len(keys)
        if len(found) > limit:
            return found[:limit], found[limit - 1][0]
        if len(keys) < chunk:  # the end, or of the source's own window (``more``)
            return found, getattr(source, "more", None)
        cursor = keys[-1]
        if scanned >= SCAN_BUDGET:
            return found, cursor
        chunk = min(chunk * 2, 1000, SCAN_BUDGET - scanned)


def viewer_collectives(user_id: int) -> frozenset[int]:
    """The user's collectives: the cached set, filled from Postgres on a miss (or read
    from Postgres when Redis is unusable or another request is filling it)."""
    return cf.collectives(state(), user_id)


def viewer_blocked(user_id: int) -> frozenset[int]:
    """The authors the user blocked: the cached set, filled from Postgres on a miss, once
    (a fill that landed since the page's read is read, not loaded again); read from
    Postgres when Redis is unusable or another request is still filling it."""
    app = state()
    key = cf.CommunityKeys(app.cache.keys).blocked(user_id)

    def load() -> list[int]:
        with app.db.session() as session:
            return posts.blocked_by(session, user_id)

    try:
        return frozenset(app.filler.fill(
            PATH, cf.blocked_scope(user_id), [key], load,
            lambda pipe, temps, ids: cf.stage_blocked(pipe, temps[key], ids),
            only_if_missing=True))
    except LeaseHeld:
        with contextlib.suppress(CacheUnavailable):
            found = cf.read_blocked(app.cache, PATH, user_id)
            if found is not NO_VALUE:
                return found
    except CacheUnavailable:
        pass
    return frozenset(load())


def _page_state(field: str, viewer: int | None, is_admin: bool
                ) -> tuple[posts_service.Visibility, cf.PageState | None]:
    """The viewer's visibility and the page's cached count state (None: Redis down),
    read together in one pipeline (with the viewer's blocked authors and the count of
    their posts). With Redis down, Postgres applies the rule in the page's own queries
    (no statement more for the member set)."""
    member_of = viewer if viewer is not None and not is_admin else None
    app = state()
    try:
        page = cf.read_count(app.cache, PATH, field, member_of, viewer)
    except CacheUnavailable:
        page = None
    if is_admin:
        return posts_service.Visibility(None), page
    if member_of is None:
        return posts_service.PUBLIC, page
    if page is None:
        return posts_service.Visibility(None, sql=(member_of, False)), None
    colls = page.collectives if page is not None else NO_VALUE
    if colls is NO_VALUE:
        colls = viewer_collectives(member_of)
    return posts_service.Visibility.of(colls), page


def _total(field: str, page: cf.PageState | None, vis: posts_service.Visibility,
           compute: Callable[[], cf.Grouped]) -> int:
    """The viewer's ``total_count``: the cached grouped count (computed and cached on a
    miss) summed over what they may see."""
    if page is not None and page.count is not None:
        return vis.total(*page.count)
    value = compute()
    if page is not None:
        app = state()
        with contextlib.suppress(CacheUnavailable):
            cf.write_count(app.cache, PATH, field, value, page.version,
                           app.settings.idle_ttl)
    return vis.total(*value)


def _viewer_total(field: str, page: cf.PageState | None, vis: posts_service.Visibility,
                  count: Callable[[Sequence[int] | None], cf.Grouped],
                  viewer: int | None) -> int:
    """``total_count`` as the viewer sees it: ``_total`` less the posts of the authors
    they blocked (which pages never list). That part is counted once per blocked set (its
    digest rides with the value) in the counts hash, read in the page's count pipeline,
    and costs an index range per blocked author (``ix_posts_author_time``) when computed.
    With Redis down (``page`` None), ``count`` excluded them in its own statement."""
    total = _total(field, page, vis, lambda: count(None))
    if page is None or viewer is None:
        return total
    blocked = page.blocked
    if blocked is NO_VALUE or blocked is None:
        blocked = viewer_blocked(viewer)
    if not blocked:
        return total
    digest = cf.blocked_digest(blocked)
    if page.blocked_count is not None and page.blocked_count[0] == digest:
        value = page.blocked_count[1]
    else:
        value = count(sorted(blocked))
        app = state()
        with contextlib.suppress(CacheUnavailable):
            cf.write_count(app.cache, PATH, cf.blocked_field(viewer, field),
                           cf.encode_adjustment(digest, value), page.version,
                           app.settings.idle_ttl)
    return max(total - vis.total(*value), 0)


def _no_match_page() -> dict[str, Any]:
    return {"posts": [], "total_count": 0, "has_more": False, "next_cursor": None}


# Up to this many posts with a page's tags, their walk collects them from the GIN index
# and sorts them (work: these few); from it on, the page walks the feed's order within
# the scan budget (common tags: matches come quickly; the budget bounds a common tag the
# recent posts lack, which an unbounded time-index walk would read to its end): for
# ``recent`` in one statement over the newest SCAN_BUDGET posts after the cursor.
SPARSE_TAGS = 1000


def _matches(asset_type: str | None, tags: list[str]) -> int | None:
    """How many live posts match the filters, up to ``SPARSE_TAGS`` (None: no filter).
    One index probe; 0 answers the page: nothing walked, nothing cached, so a stream of
    made-up tags costs a probe each and no memory."""
    if not (asset_type or tags):
        return None
    with state().db.session() as session:
        return posts.count_upto(session, asset_type, tags, SPARSE_TAGS)


@bp.route("/community/feed", methods=["GET"])
@login_optional
@bp.arguments(FeedArgs, location="query")
@bp.response(200, FeedOut)
def feed(args):
    """Posts of one feed, newest (``recent``, ``following``) or most trending first.

    Only posts the caller may see are listed and counted (a collective's posts for its
    members and admins; never those of authors the caller blocked). A page examines at
    most a fixed number of posts, so it can hold fewer than ``limit`` posts (even none)
    with ``has_more`` true: go on with ``next_cursor``. ``recent`` and ``following``
    pages filtered by an asset type or by tags few posts have are read from an index
    (full pages); a filter no post matches answers an empty last page at once.
    """
    feed_type, limit = args["feed_type"], args["limit"]
    asset_type, tags = args["asset_type"], _parse_tags(args["tags"])
    viewer = g.user.id if g.user else None
    is_admin = bool(g.user and g.user.is_admin)
    if feed_type == "following" and viewer is None:
        raise Unauthorized("The following feed needs a signed-in user",
                           code="authentication_required")
    query = hashlib.sha1(orjson.dumps([asset_type, tags])).hexdigest()[:10]
    data = decode_cursor(args["cursor"], feed_type, query) if args["cursor"] else None
    after: Key | None = tuple(data["k"]) if data else None  # type: ignore[assignment]
    matches = _matches(asset_type, tags)
    if matches == 0:
        stats.count(PATH + ":" + feed_type, "index")
        return _no_match_page()
    filters = (asset_type, tags)
    app = state()
    extra: dict[str, Any] = {}

    def unblocked() -> int | None:  # Redis down: counts exclude blocked authors in SQL
        return viewer if page is None else None

    authors: list[int] | None = None
    if feed_type == "recent":
        source: Source = RecentSource()

        def count(only: Sequence[int] | None) -> cf.Grouped:
            with app.db.session() as session:
                return posts.count_live_grouped(session, only, *filters, vis.sql,
                                                unblocked())

        field = cf.count_field("g", "r", asset_type, tags)
    elif feed_type == "following":
        authors = followees_of(viewer)  # type: ignore[arg-type]
        source = FollowingSource(authors)

        def count(only: Sequence[int] | None) -> cf.Grouped:
            mine = authors if only is None else sorted(set(authors) & set(only))
            with app.db.session() as session:
                return posts.count_live_grouped(session, mine, *filters, vis.sql,
                                                unblocked())

        digest = hashlib.sha1(orjson.dumps(authors)).hexdigest()[:16]
        field = cf.count_field("g", "f", viewer, digest, asset_type, tags)
    else:
        walk = TrendingSource.resume(data) if data else TrendingSource.start()
        source = walk
        extra = {"s": walk.sid, **({"fl": list(walk.floor)} if walk.floor else {})}

        def count(only: Sequence[int] | None) -> cf.Grouped:
            with app.db.session() as session:
                return cf_sql.count_snapshot_grouped(session, walk.sid, *filters, vis.sql,
                                                     unblocked(), only)

        field = cf.count_field("g", "t", walk.sid, asset_type, tags)
    vis, page = _page_state(field, viewer, is_admin)
    sparse = bool(tags) and (matches or 0) < SPARSE_TAGS
    if feed_type != "trending" and (sparse or (asset_type and not tags)):
        source = FilteredSource(authors, asset_type, tags, viewer, vis, sparse=sparse)
    elif feed_type == "recent" and tags:  # common tags: the newest posts, a window a page
        source = FilteredSource(None, asset_type, tags, viewer, vis, window=SCAN_BUDGET)
    rows, resume = collect(source, after, limit, viewer, vis, asset_type, tags)
    stats.count(PATH + ":" + feed_type, source.outcome)
    next_cursor = None
    if resume is not None:
        next_cursor = encode_cursor({"f": feed_type, "q": query, "k": list(resume), **extra})
    return {
        "posts": [_post_json(row) for _, row in rows],
        "total_count": _viewer_total(field, page, vis, count, viewer),
        "has_more": resume is not None,
        "next_cursor": next_cursor,
    }
