"""Unique writes on every write endpoint of the read paths, and checks that they landed.

Each ``WriteKind`` knows how to seed what its writes need, how to make write number ``i``
of a user (unique per user and ``i``), and how to check a set of acknowledged writes in
Postgres and through the API. Kinds whose endpoints are not in the app are skipped, so the
fault tests grow with the service.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import text

from tests.support.auth import bearer

ADMIN = bearer(1, admin=True)


def has_route(app: Flask, rule: str, method: str = "POST") -> bool:
    return any(r.rule.rstrip("/") == rule.rstrip("/") and method in r.methods
               for r in app.url_map.iter_rules())


@dataclass
class Outcome:
    kind: str
    user: int
    key: Any
    status: int | str
    ms: float
    started: float = 0.0  # time.monotonic() when the request began
    retry_after: str | None = None  # the response's Retry-After header, if any


@dataclass
class WriteKind:
    name: str
    # (app) -> bool: are the endpoints there?
    available: Callable[[Flask], bool]
    # (app, client, users, per_user) -> context passed to write/verify
    seed: Callable[[Flask, FlaskClient, list[int], int], dict[str, Any]]
    # (client, ctx, user, i) -> (status, key)
    write: Callable[[FlaskClient, dict[str, Any], int, int], tuple[int, Any]]
    # (app, ctx, user) -> keys present in Postgres
    in_db: Callable[[Flask, dict[str, Any], int], set[Any]]
    # (client, ctx, user) -> keys visible through the API
    in_api: Callable[[FlaskClient, dict[str, Any], int], set[Any]]
    # (ctx, user, i) -> the key write ``i`` of ``user`` makes (what ``write`` returns)
    key_of: Callable[[dict[str, Any], int, int], Any]
    # (app, ctx) -> list of invariant violations ("half-applied" writes)
    invariants: Callable[[Flask, dict[str, Any]], list[str]] = field(
        default=lambda app, ctx: []
    )


def _sql(app: Flask, query: str, **params: Any) -> list[tuple]:
    with app.extensions["hc"].db.engine.begin() as conn:
        return [tuple(r) for r in conn.execute(text(query), params)]


# --- reels: POST /api/reels/<id>/view --------------------------------------------------------


def _seed_reels(app, client, users, per_user):
    reels = []
    for i in range(per_user):
        r = client.post("/api/reels/", headers=ADMIN, json={
            "video_url": f"https://cdn.example/r{i}.mp4", "description": f"reel {i}",
            "duration": 30, "is_available": True})
        assert r.status_code == 201, r.get_json()
        reels.append(r.get_json()["reel_id"])
    return {"reels": reels}


def _reel_of(ctx, user, i):
    return ctx["reels"][i % len(ctx["reels"])]


def _view_reel(client, ctx, user, i):
    reel = _reel_of(ctx, user, i)
    r = client.post(f"/api/reels/{reel}/view", headers=bearer(user), json={"view_duration": 5})
    return r.status_code, reel


REELS = WriteKind(
    "reel_view",
    lambda app: has_route(app, "/api/reels/<id:reel_id>/view"),
    _seed_reels,
    _view_reel,
    lambda app, ctx, user: {r[0] for r in _sql(
        app, "SELECT reel_id FROM reel_views WHERE user_id = :u", u=user)},
    lambda client, ctx, user: {
        reel["reel_id"] for reel in client.get(
            "/api/reels/recently-viewed?per_page=100", headers=bearer(user)
        ).get_json()["data"]["reels"]},
    _reel_of,
)


# --- activity: POST /api/events/ (admin) -----------------------------------------------------


def _title_of(ctx, user, i):
    return f"w{user}-{i}"


def _create_event(client, ctx, user, i):
    title = _title_of(ctx, user, i)
    r = client.post("/api/events/", headers=ADMIN, json={
        "user_id": user, "event_type": "milestone", "title": title})
    return r.status_code, title


def _activity_api(client, ctx, user):
    body = client.get("/api/events/activity-feed/?page_size=100", headers=bearer(user))
    assert body.status_code == 200, body.get_json()
    return {item["title"] for item in body.get_json()["results"]}


ACTIVITY = WriteKind(
    "activity_create",
    lambda app: has_route(app, "/api/events/") and has_route(
        app, "/api/events/activity-feed/", "GET"),
    lambda app, client, users, per_user: {},
    _create_event,
    lambda app, ctx, user: {r[0] for r in _sql(
        app, "SELECT title FROM activities WHERE user_id = :u", u=user)},
    _activity_api,
    _title_of,
    # An event without its activity (or the reverse) is a half-applied write.
    lambda app, ctx: [f"event {r[0]} has no activity" for r in _sql(
        app, "SELECT e.id FROM events e LEFT JOIN activities a ON a.source_event_id = e.id "
             "WHERE a.id IS NULL")],
)


# --- likes: POST /community/posts/<id>/like, else the heart of section 4 --------------------


def _seed_posts(app, client, users, per_user):
    rows = _sql(app, "INSERT INTO posts (author_id, title) SELECT 999, 'p' || g "
                     "FROM generate_series(1, :n) g RETURNING id", n=per_user)
    with app.extensions["hc"].db.engine.begin() as conn:
        conn.execute(text("INSERT INTO users (id, display_name) VALUES (999, 'author') "
                          "ON CONFLICT DO NOTHING"))
    return {"posts": sorted(r[0] for r in rows)}


def _post_of(ctx, user, i):
    return ctx["posts"][i % len(ctx["posts"])]


def _like(client, ctx, user, i):
    post = _post_of(ctx, user, i)
    path = (f"/community/posts/{post}/like" if ctx.get("community")
            else f"/api/posts/{post}/heart/")
    r = client.post(path, headers=bearer(user))
    return r.status_code, post


def _likes_api(client, ctx, user):
    seen = set()
    for post in ctx["posts"]:
        if ctx.get("community"):
            r = client.get(f"/community/posts/{post}/engagement", headers=bearer(user))
            if r.status_code == 200 and r.get_json()["is_liked"]:
                seen.add(post)
        else:
            # No per-viewer read of hearts in section 4 alone: Postgres is the check.
            return LIKES.in_db(client.application, ctx, user)
    return seen


def _seed_likes(app, client, users, per_user):
    ctx = _seed_posts(app, client, users, per_user)
    ctx["community"] = has_route(app, "/community/posts/<id:post_id>/like")
    return ctx


LIKES = WriteKind(
    "like",
    lambda app: has_route(app, "/community/posts/<id:post_id>/like") or has_route(
        app, "/api/posts/<id:post_id>/heart"),
    _seed_likes,
    _like,
    lambda app, ctx, user: {r[0] for r in _sql(
        app, "SELECT post_id FROM post_likes WHERE user_id = :u", u=user)},
    _likes_api,
    _post_of,
    lambda app, ctx: [f"post {r[0]}: like_count {r[1]} != {r[2]} likes" for r in _sql(
        app, "SELECT p.id, p.like_count, count(l.user_id) FROM posts p "
             "LEFT JOIN post_likes l ON l.post_id = p.id GROUP BY p.id "
             "HAVING p.like_count <> count(l.user_id)")],
)


# --- group feed: POST /api/v1/messaging/feed/<id>/mark-viewed/ -------------------------------

FEED = "/api/v1/messaging/feed/"


def _seed_group(app, client, users, per_user):
    group = client.post("/api/v1/groups/", headers=ADMIN, json={"name": "g"}).get_json()["id"]
    for user in users:
        r = client.post(f"/api/v1/groups/{group}/members/", headers=ADMIN,
                        json={"user_id": user})
        assert r.status_code in (200, 201), r.get_json()
    items = []
    for i in range(per_user):
        r = client.post(FEED, headers=ADMIN, json={
            "group": group, "title": f"item {i}", "content_type": "text"})
        assert r.status_code == 201, r.get_json()
        items.append(r.get_json()["id"])
    return {"group": group, "items": items}


def _item_of(ctx, user, i):
    return ctx["items"][i % len(ctx["items"])]


def _mark_viewed(client, ctx, user, i):
    item = _item_of(ctx, user, i)
    r = client.post(f"{FEED}{item}/mark-viewed/", headers=bearer(user))
    return r.status_code, item


def _viewed_api(client, ctx, user):
    r = client.get(f"{FEED}?group={ctx['group']}&limit=200", headers=bearer(user))
    assert r.status_code == 200, r.get_json()
    return {item["id"] for item in r.get_json() if item["has_viewed"]}


MARK_VIEWED = WriteKind(
    "mark_viewed",
    lambda app: has_route(app, "/api/v1/messaging/feed/<id:item_id>/mark-viewed")
    or any("mark-viewed" in r.rule and "<" in r.rule for r in app.url_map.iter_rules()),
    _seed_group,
    _mark_viewed,
    lambda app, ctx, user: {r[0] for r in _sql(
        app, "SELECT item_id FROM feed_item_views WHERE user_id = :u", u=user)},
    _viewed_api,
    _item_of,
)

ALL_KINDS = (MARK_VIEWED, LIKES, REELS, ACTIVITY)


def kinds_for(app: Flask) -> list[WriteKind]:
    return [k for k in ALL_KINDS if k.available(app)]


def timed(fn: Callable[..., tuple[int, Any]], *args: Any) -> tuple[int | str, Any, float]:
    """Run ``fn(*args)``, a write; returns (status or exception name, key, milliseconds)."""
    start = time.perf_counter()
    try:
        status, key = fn(*args)
    except Exception as exc:  # noqa: BLE001 - recorded and asserted on by the caller
        return type(exc).__name__, None, (time.perf_counter() - start) * 1000
    return status, key, (time.perf_counter() - start) * 1000


class Writers:
    """``threads`` writer threads making unique writes of every kind until ``stop()``.

    Writer ``n`` writes as ``users[n]``, then ``users[n + threads]``, ...: ``per_user``
    writes per user and kind, each with its own key, so no lost write hides behind an
    acknowledged one with the same key. A writer that has used all its users stops and
    counts in ``exhausted`` (seed more users if a test sees one). Each outcome carries
    the time its request began and its ``Retry-After``; ``phase_of()`` (if given) names
    the recorder phase a write is counted in when it begins.
    """

    def __init__(self, app: Flask, kinds: list[WriteKind], ctx: dict[str, dict[str, Any]],
                 users: list[int], threads: int, per_user: int, pause: float,
                 phase_of: Callable[[], Any] | None = None) -> None:
        assert len(users) >= threads and len(users) % threads == 0, (len(users), threads)
        self.app, self.kinds, self.ctx, self.users = app, kinds, ctx, users
        self.per_user, self.pause, self.phase_of = per_user, pause, phase_of
        self.outcomes: list[Outcome] = []
        self.exhausted = 0
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(n,), daemon=True)
                         for n in range(threads)]

    def start(self) -> Writers:
        for t in self._threads:
            t.start()
        return self

    def stop(self, timeout: float = 30) -> None:
        """Stop the writers after their current write; raises if one is still stuck."""
        self._stop.set()
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        assert not any(t.is_alive() for t in self._threads), "a writer hung"

    def _run(self, n: int) -> None:
        client = recording_client(self.app)
        mine = self.users[n::len(self._threads)]
        step = 0
        while not self._stop.is_set():
            kind = self.kinds[step % len(self.kinds)]
            generation, i = divmod(step // len(self.kinds), self.per_user)
            if generation >= len(mine):
                with self._cond:
                    self.exhausted += 1
                    self._cond.notify_all()
                return
            phase = self.phase_of() if self.phase_of else None
            client.last = None
            started = time.monotonic()
            status, key, ms = timed(kind.write, client, self.ctx[kind.name], mine[generation], i)
            retry_after = client.last.headers.get("Retry-After") if client.last else None
            if phase is not None:
                phase.add(ms, status)
            with self._cond:
                self.outcomes.append(Outcome(kind.name, mine[generation], key, status, ms,
                                             started, retry_after))
                self._cond.notify_all()
            step += 1
            self._stop.wait(self.pause)

    def between(self, start: float, end: float = float("inf")) -> list[Outcome]:
        """Finished writes whose request began in [start, end)."""
        with self._cond:
            return [o for o in self.outcomes if start <= o.started < end]

    def wait(self, condition: Callable[[], bool], timeout: float) -> bool:
        """Block until ``condition()`` holds (checked at every finished write and at least
        every 50 ms), at most ``timeout`` seconds, or until every writer has stopped."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                if condition():
                    return True
                left = deadline - time.monotonic()
                if left <= 0 or not any(t.is_alive() for t in self._threads):
                    return condition()
                self._cond.wait(min(left, 0.05))


def recording_client(app: Flask) -> FlaskClient:
    """A test client of ``app``'s client class that keeps its last response in ``last``."""

    class Recording(app.test_client_class or FlaskClient):  # type: ignore[misc]
        last = None

        def open(self, *args: Any, **kwargs: Any):  # type: ignore[override]
            self.last = super().open(*args, **kwargs)
            return self.last

    return Recording(app, app.response_class, use_cookies=True)


# --- reads: every read path, to compare a cached answer with Postgres's ----------------------

VOLATILE = {"age_display", "score", "score_components", "next", "previous", "next_cursor"}


def read_paths(app: Flask, ctx: dict[str, dict[str, Any]]) -> list[str]:
    """GET paths of every read path the app has (each read as the user in question)."""
    paths = []
    if "mark_viewed" in ctx:
        group = ctx["mark_viewed"]["group"]
        paths += [f"{FEED}?group={group}&limit=200", f"{FEED}unread-count/?group={group}",
                  f"{FEED}unread-count/"]
    if has_route(app, "/api/events/activity-feed/", "GET"):
        paths += ["/api/events/activity-feed/?page_size=100",
                  "/api/events/activity-feed/summary/",
                  "/api/events/activity-feed/?is_read=false&page_size=100"]
    if has_route(app, "/community/feed", "GET"):
        paths += ["/community/feed?feed_type=recent&limit=50",
                  "/community/feed?feed_type=following&limit=50"]
    if "like" in ctx and ctx["like"].get("community"):
        paths += [f"/community/posts/{p}/engagement" for p in ctx["like"]["posts"][:5]]
    if has_route(app, "/api/posts/", "GET"):
        paths += ["/api/posts/?ordering=chronological&page_size=50"]
    if has_route(app, "/api/reels/recently-viewed", "GET"):
        paths += ["/api/reels/recently-viewed?per_page=100"]
    return paths


def normalized(value: Any) -> Any:
    """A response body without fields that legitimately change from one second to the next."""
    if isinstance(value, dict):
        return {k: normalized(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [normalized(v) for v in value]
    return value


def snapshot(client: FlaskClient, paths: list[str], user: int) -> dict[str, Any]:
    out = {}
    for path in paths:
        r = client.get(path, headers=bearer(user))
        out[path] = (r.status_code, normalized(r.get_json()))
    return out
