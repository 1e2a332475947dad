"""What the benchmark loads: every read path and main write of issue 7, plus the ceiling.

Each ``Endpoint`` names its route as the OpenAPI document spells it (so a route that has
not landed yet is reported as "missing") and builds its request lines from a ``Fixture``:
the active users' tokens and the ids they may use, loaded once from the data set.
A request line is ``(method, path with query, token, JSON body or "")``.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import quote

import requests
from sqlalchemy import create_engine, text

from service.auth import make_token

Line = tuple[str, str, str, str]


@dataclass
class Fixture:
    """Who sends the load and which ids they use, drawn from the data set with a seed."""

    users: list[int]
    tokens: dict[int, str]
    groups_of: dict[int, list[int]]
    items_of: dict[int, list[int]]  # live item ids per group (of the active users' groups)
    hot_posts: list[int]  # live public posts, most liked first
    reels: list[tuple[int, int]]  # available reels (id, duration)
    cursors: dict[str, list[tuple[int, str]]] = field(default_factory=dict)

    @classmethod
    def load(cls, url: str, active: int, secret: str, seed: int) -> Fixture:
        """Load from the database at ``url`` (SQLAlchemy URL); ``active`` users among the
        group members; tokens signed with ``secret`` (valid 6 hours)."""
        rng = random.Random(seed + 1)
        engine = create_engine(url)
        try:
            with engine.connect() as conn:
                members = [r[0] for r in conn.execute(text(
                    "SELECT DISTINCT user_id FROM group_members ORDER BY user_id"))]
                users = sorted(rng.sample(members, k=min(active, len(members))))
                groups_of: dict[int, list[int]] = {}
                for u, g in conn.execute(text(
                        "SELECT user_id, group_id FROM group_members "
                        "WHERE user_id = ANY(:u) ORDER BY user_id, group_id"), {"u": users}):
                    groups_of.setdefault(u, []).append(g)
                wanted = sorted({g for gs in groups_of.values() for g in gs})
                items_of: dict[int, list[int]] = {}
                for g, i in conn.execute(text(
                        "SELECT group_id, id FROM feed_items WHERE group_id = ANY(:g) "
                        "AND deleted_at IS NULL ORDER BY id"), {"g": wanted}):
                    items_of.setdefault(g, []).append(i)
                hot_posts = [r[0] for r in conn.execute(text(
                    # Public posts only: a collective's posts are for its members
                    # (a like by anyone else is a 404).
                    "SELECT id FROM posts WHERE deleted_at IS NULL AND collective_id IS NULL "
                    "ORDER BY like_count DESC, id LIMIT 5000"))]
                reels = [(r[0], r[1]) for r in conn.execute(text(
                    "SELECT id, duration FROM reels WHERE is_available ORDER BY id"))]
        finally:
            engine.dispose()
        tokens = {u: make_token(secret, u, ttl=6 * 3600) for u in users}
        return cls(users, tokens, groups_of, items_of, hot_posts, reels)


@dataclass(frozen=True)
class Endpoint:
    name: str
    label: str  # as issue 7 names it
    kind: str  # "read", "write" or "ceiling"
    method: str
    route: str  # OpenAPI path template
    build: Callable[[Fixture, random.Random, int], list[Line]]
    needs: str = ""  # a Fixture.cursors entry prepared against the running service

    def available(self, routes: set[tuple[str, str]]) -> bool:
        return (self.method, normalise(self.route)) in routes


def normalise(route: str) -> str:
    """``/a/{id}/b/`` and ``/a/{item_id}/b`` compare equal."""
    return re.sub(r"\{[^}]*\}", "{}", route).rstrip("/") or "/"


def routes_of(openapi: dict) -> set[tuple[str, str]]:
    return {(method.upper(), normalise(path))
            for path, ops in openapi.get("paths", {}).items() for method in ops}


def _per_user(fx: Fixture, rng: random.Random, n: int, make: Callable[[int], Line | None],
              only: int = 0) -> list[Line]:
    """At least one line per active user (so every user is loaded), at least ``n``;
    ``only``: the first ``only`` active users instead of all."""
    active = fx.users[:only] if only else fx.users
    users = active * max(1, -(-n // max(1, len(active))))
    lines = [make(u) for u in users]
    out = [x for x in lines if x is not None]
    rng.shuffle(out)
    return out


def _get(path: str, only: int = 0) -> Callable[[Fixture, random.Random, int], list[Line]]:
    return lambda fx, rng, n: _per_user(fx, rng, n, lambda u: ("GET", path, fx.tokens[u], ""),
                                        only)


# "Cached" personalized pages: few enough users that the warm-up (walking the lines in
# order, one user per connection at a time) fills every one of their pages.
CACHED_PAGE_USERS = 32


def _group_page(fx: Fixture, rng: random.Random, n: int) -> list[Line]:
    return _per_user(fx, rng, n, lambda u: (
        "GET", f"/api/v1/messaging/feed/?group={rng.choice(fx.groups_of[u])}&limit=50",
        fx.tokens[u], ""))


def _deep_trending(fx: Fixture, rng: random.Random, n: int) -> list[Line]:
    return [("GET", f"/community/feed?feed_type=trending&limit=20&cursor={quote(c, safe='')}",
             fx.tokens[u], "") for u, c in fx.cursors.get("trending_deep", [])]


# A filter no post matches, on each feed (issue 16: each one walked the whole table).
NO_MATCH = ("feed_type=recent&tags=no-such-tag", "feed_type=recent&asset_type=nope",
            "feed_type=trending&tags=no-such-tag", "feed_type=following&asset_type=nope",
            "feed_type=following&tags=music,no-such-tag")


def _no_match(fx: Fixture, rng: random.Random, n: int) -> list[Line]:
    return _per_user(fx, rng, n, lambda u: (
        "GET", f"/community/feed?{rng.choice(NO_MATCH)}&limit=20", fx.tokens[u], ""))


def _mark_viewed(fx: Fixture, rng: random.Random, n: int) -> list[Line]:
    def make(u: int) -> Line | None:
        items = fx.items_of.get(rng.choice(fx.groups_of[u]))
        if not items:
            return None
        return ("POST", f"/api/v1/messaging/feed/{rng.choice(items)}/mark-viewed/",
                fx.tokens[u], "")

    return _per_user(fx, rng, n, make)


def _like(fx: Fixture, rng: random.Random, n: int) -> list[Line]:
    # Skewed like the data set: a few hot posts take most likes (row contention included).
    weights = [1.0 / (r + 1) for r in range(len(fx.hot_posts))]
    return _per_user(fx, rng, n, lambda u: (
        "POST", f"/community/posts/{rng.choices(fx.hot_posts, weights)[0]}/like",
        fx.tokens[u], ""))


def _reel_view(fx: Fixture, rng: random.Random, n: int) -> list[Line]:
    def make(u: int) -> Line:
        reel, duration = rng.choice(fx.reels)
        return ("POST", f"/api/reels/{reel}/view", fx.tokens[u],
                json.dumps({"view_duration": rng.randint(0, duration)}))

    return _per_user(fx, rng, n, make)


ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint("group_feed", "has_viewed page (group feed)", "read", "GET",
             "/api/v1/messaging/feed/", _group_page),
    Endpoint("unread_counts", "unread counts (all groups)", "read", "GET",
             "/api/v1/messaging/feed/unread-count/",
             _get("/api/v1/messaging/feed/unread-count/")),
    Endpoint("activity_summary", "activity summary", "read", "GET",
             "/api/events/activity-feed/summary/",
             _get("/api/events/activity-feed/summary/")),
    Endpoint("trending_first", "community trending, first page", "read", "GET",
             "/community/feed", _get("/community/feed?feed_type=trending&limit=20")),
    Endpoint("trending_deep", "community trending, deep cursor", "read", "GET",
             "/community/feed", _deep_trending, needs="trending_deep"),
    Endpoint("feed_no_match", "community feed, a filter nothing matches", "read", "GET",
             "/community/feed", _no_match),
    Endpoint("recent_tag", "community recent, one tag (index walk)", "read", "GET",
             "/community/feed", _get("/community/feed?feed_type=recent&tags=music&limit=20")),
    Endpoint("personalized_cached", "personalized page (cached)", "read", "GET",
             "/api/posts/", _get("/api/posts/?page=1&page_size=20", CACHED_PAGE_USERS)),
    Endpoint("personalized_uncached", "personalized page (uncached)", "read", "GET",
             "/api/posts/", _get("/api/posts/?page=1&page_size=20&invalidate_cache=true")),
    Endpoint("recent_reels", "recently viewed reels", "read", "GET",
             "/api/reels/recently-viewed", _get("/api/reels/recently-viewed?page=1&per_page=20")),
    Endpoint("mark_viewed", "mark-viewed (write)", "write", "POST",
             "/api/v1/messaging/feed/{item_id}/mark-viewed/", _mark_viewed),
    Endpoint("like", "like a post (write)", "write", "POST",
             "/community/posts/{post_id}/like", _like),
    Endpoint("reel_view", "reel view (write)", "write", "POST",
             "/api/reels/{reel_id}/view", _reel_view),
)

CEILING = Endpoint("ceiling", "ceiling: GET /healthz", "ceiling", "GET", "/healthz",
                   _get("/healthz"))


def prepare_cursors(base_url: str, fx: Fixture, users: int, depth: int) -> list[tuple[int, str]]:
    """Walk ``depth`` trending pages for ``users`` active users; their next cursors.

    Returns ``[]`` when the feed answers no cursor (then the endpoint is reported
    "no deep cursor"). Raises ``requests`` errors only on a dead service.
    """
    out = []
    session = requests.Session()
    for u in fx.users[:users]:
        headers = {"Authorization": f"Bearer {fx.tokens[u]}"}
        cursor = None
        for _ in range(depth):
            params = {"feed_type": "trending", "limit": "20"}
            if cursor:
                params["cursor"] = cursor
            reply = session.get(f"{base_url}/community/feed", params=params, headers=headers,
                                timeout=10)
            if reply.status_code != 200:
                return out
            cursor = reply.json().get("next_cursor")
            if not cursor:
                break
        if cursor:
            out.append((u, cursor))
    return out
