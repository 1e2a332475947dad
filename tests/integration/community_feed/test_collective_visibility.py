"""Collective posts are for members (API.md section 3, "Visibility"), through HTTP.

A post with a ``collective_id`` is seen only by that collective's members and by admins:
in every feed (trending, recent, following, personalized, chronological), in
``total_count`` / ``count``, and on its own endpoints (404 for others). Cached pages and
cached counts are shared by every viewer and filtered per viewer on the way out, so a
join or a leave shows at the viewer's next page.
"""

from __future__ import annotations

import base64

import orjson
import pytest
from sqlalchemy import delete

from cache import community_feed as cf
from cache import posts as cache_posts
from cache import stats
from cache.keyspace_admin import clear_keyspace
from cache.lease import LeaseHeld
from cache.outbox import relay_outbox
from service import community_feed_walk, create_app
from storage.db import DB_QUERIES
from storage.models import TrendingSnapshot
from tests.support.auth import bearer

ADMIN = bearer(1, admin=True)
MEMBER_A, MEMBER_B, OUTSIDER, AUTHOR = 11, 12, 13, 20


def _collective(client, name):
    r = client.post("/api/collectives/", json={"name": name}, headers=ADMIN)
    assert r.status_code == 201
    return r.get_json()["id"]


def _join(client, user, coll, member=True):
    url = f"/api/collectives/{coll}/join/"
    r = (client.post if member else client.delete)(url, headers=bearer(user))
    assert r.status_code == 200, r.get_json()


def _post(client, user, **body):
    body.setdefault("title", "p")
    r = client.post("/community/posts", json=body, headers=bearer(user))
    assert r.status_code == 201, r.get_json()
    return r.get_json()["id"]


def _walk(client, headers, **params):
    seen, cursor, bodies = [], None, []
    while True:
        q = dict(params)
        if cursor:
            q["cursor"] = cursor
        r = client.get("/community/feed", query_string=q, headers=headers)
        assert r.status_code == 200, r.get_json()
        body = r.get_json()
        bodies.append(body)
        seen += [p["id"] for p in body["posts"]]
        if not body["has_more"]:
            return seen, bodies
        cursor = body["next_cursor"]
        assert len(bodies) < 200


def _ranked(client, headers, ordering):
    seen, page = [], 1
    while True:
        r = client.get("/api/posts/", query_string={"ordering": ordering, "page": page,
                                                    "page_size": 3}, headers=headers)
        assert r.status_code == 200, r.get_json()
        body = r.get_json()
        seen += [p["id"] for p in body["results"]]
        if body["next"] is None:
            return seen, body["count"]
        page += 1


@pytest.fixture
def world(client):
    """Public posts by AUTHOR and 30; collective A's posts (MEMBER_A and AUTHOR are
    members), collective B's post (MEMBER_B)."""
    a, b = _collective(client, "A"), _collective(client, "B")
    _join(client, MEMBER_A, a)
    _join(client, AUTHOR, a)
    _join(client, MEMBER_B, b)
    public = [_post(client, AUTHOR), _post(client, 30), _post(client, AUTHOR)]
    in_a = [_post(client, AUTHOR, collective_id=a), _post(client, MEMBER_A, collective_id=a)]
    in_b = [_post(client, MEMBER_B, collective_id=b)]
    for viewer in (MEMBER_A, MEMBER_B, OUTSIDER, 1):  # following: every author above
        for author in (AUTHOR, 30, MEMBER_A, MEMBER_B):
            if author != viewer:
                client.post(f"/community/users/{author}/follow", headers=bearer(viewer))
    # Engagement so that trending has an order and collective posts rank first.
    for pid in in_a + in_b:
        client.post(f"/community/posts/{pid}/like", headers=ADMIN)
    return {"a": a, "b": b, "public": public, "in_a": in_a, "in_b": in_b}


def _expected(world, who):
    if who == "admin":
        return set(world["public"] + world["in_a"] + world["in_b"])
    if who == MEMBER_A:
        return set(world["public"] + world["in_a"])
    if who == MEMBER_B:
        return set(world["public"] + world["in_b"])
    return set(world["public"])


def _headers(who):
    return {} if who == "anon" else ADMIN if who == "admin" else bearer(who)


def _following_expected(world, who):
    """The following feed lists the followed authors' posts: not the viewer's own."""
    own = {MEMBER_A: {world["in_a"][1]}, MEMBER_B: set(world["in_b"])}.get(who, set())
    return _expected(world, who) - own


@pytest.mark.parametrize("who", ["anon", OUTSIDER, MEMBER_A, MEMBER_B, "admin"])
def test_every_feed_and_count_shows_collective_posts_to_members_only(client, world, who):
    headers = _headers(who)
    expected = _expected(world, who)
    for feed_type in ("recent", "trending", "following"):
        if feed_type == "following" and who == "anon":
            continue
        for limit in (1, 2, 50):
            seen, bodies = _walk(client, headers, feed_type=feed_type, limit=limit)
            want = _following_expected(world, who) if feed_type == "following" else expected
            assert len(seen) == len(set(seen)), (feed_type, limit)
            assert set(seen) == want, (feed_type, limit)
            assert {b["total_count"] for b in bodies} == {len(want)}, (feed_type, limit)
    for ordering in ("personalized", "chronological"):
        seen, count = _ranked(client, headers, ordering)
        assert set(seen) == expected and len(seen) == len(expected), ordering
        assert count == len(expected), ordering


def test_post_endpoints_are_404_for_non_members(client, world):
    post = world["in_a"][0]
    base = f"/community/posts/{post}"
    calls = [
        ("post", base + "/like", None), ("delete", base + "/like", None),
        ("post", base + "/view", None), ("post", base + "/comments", {"body": "hi"}),
        ("post", f"/api/posts/{post}/heart/", None),
        ("delete", f"/api/posts/{post}/heart/", None),
        ("post", f"/api/posts/{post}/praise/", None),
        ("post", f"/api/posts/{post}/trophy/", None),
        ("get", base + "/engagement", None),
    ]
    for method, url, body in calls:
        for headers in (bearer(OUTSIDER), bearer(MEMBER_B)):
            r = getattr(client, method)(url, json=body, headers=headers)
            assert r.status_code == 404, (method, url)
            assert r.get_json()["code"] == "not_found"
        for headers in (bearer(MEMBER_A), ADMIN):
            r = getattr(client, method)(url, json=body, headers=headers)
            assert r.status_code in (200, 201, 204), (method, url, r.get_json())
    assert client.get(base + "/engagement").status_code == 404  # anonymous
    public = world["public"][0]
    assert client.get(f"/community/posts/{public}/engagement").status_code == 200
    # Nothing was written by the refused calls: the counts are the members' and admin's.
    e = client.get(base + "/engagement", headers=ADMIN).get_json()
    assert e["comment_count"] == 2 and e["view_count"] == 2
    # Deleting: an outsider cannot even see it (404); the author and admins can delete.
    assert client.delete(base, headers=bearer(OUTSIDER)).status_code == 404
    assert client.delete(base, headers=bearer(MEMBER_A)).status_code == 403
    assert client.delete(base, headers=bearer(AUTHOR)).status_code == 204


def test_posting_into_a_collective_needs_membership(client, world):
    r = client.post("/community/posts", json={"title": "x", "collective_id": world["a"]},
                    headers=bearer(OUTSIDER))
    assert r.status_code == 400
    assert r.get_json()["code"] == "validation_error"
    assert list(r.get_json()["details"]) == ["collective_id"]
    for bad in (0, -1, "a", 2**63, 424242):
        r = client.post("/community/posts", json={"title": "x", "collective_id": bad},
                        headers=bearer(MEMBER_A))
        assert r.status_code == 400, bad
        assert "collective_id" in r.get_json()["details"], bad
    r = client.post("/community/posts", json={"title": "x", "collective_id": world["b"]},
                    headers=ADMIN)
    assert r.status_code == 201  # admins may post in any collective
    seen, _ = _walk(client, bearer(OUTSIDER), feed_type="recent")
    assert set(seen) == set(world["public"])  # nothing half-written by the refusals


def _redis_trips() -> float:
    return sum(s.value for m in stats.REDIS_CALLS.collect() for s in m.samples
               if s.name.endswith("_total"))


def _sql() -> float:
    return DB_QUERIES._value.get()


def test_join_and_leave_show_at_the_next_cached_page(client, state, world):
    a, b = world["a"], world["b"]
    viewer = bearer(MEMBER_A)
    for feed_type in ("recent", "trending"):
        seen, bodies = _walk(client, viewer, feed_type=feed_type, limit=50)
        assert set(seen) == _expected(world, MEMBER_A)
        # The member set and the grouped count are cached now; a warm page reads them.
        sql, trips = _sql(), _redis_trips()
        again, bodies2 = _walk(client, viewer, feed_type=feed_type, limit=50)
        assert again == seen and bodies2[0]["total_count"] == len(seen)
        if feed_type == "recent":
            # Warm: the count, the member set, the version and the order in one round
            # trip, the page's posts and the viewer's likes of them in one more; no SQL.
            assert _redis_trips() - trips == 2
            assert _sql() - sql == 0
    r = state.cache.redis
    key = cf.CommunityKeys(state.cache.keys).collectives(MEMBER_A)
    assert r.smembers(key) == {b"s", str(a).encode()}
    # Leave A, join B: the next page (same cached sets and counts) follows at once.
    _join(client, MEMBER_A, a, member=False)
    _join(client, MEMBER_A, b)
    assert r.smembers(key) == {b"s", str(b).encode()}
    want = set(world["public"] + world["in_b"])
    for feed_type in ("recent", "trending", "following"):  # A follows every author
        seen, bodies = _walk(client, viewer, feed_type=feed_type, limit=2)
        assert set(seen) == want, feed_type
        assert {x["total_count"] for x in bodies} == {len(want)}, feed_type
    for ordering in ("personalized", "chronological"):
        seen, count = _ranked(client, viewer, ordering)
        assert set(seen) == want and count == len(want), ordering
    # The other viewers' answers from the same cached structures did not change.
    seen, bodies = _walk(client, bearer(OUTSIDER), feed_type="recent", limit=2)
    assert set(seen) == set(world["public"]) and bodies[0]["total_count"] == 3
    # A leave mid-walk shows at the walk's next page.
    first = client.get("/community/feed", query_string={"feed_type": "recent", "limit": 1},
                       headers=viewer).get_json()
    _join(client, MEMBER_A, b, member=False)
    rest, bodies = _walk(client, viewer, feed_type="recent", limit=2,
                         cursor=first["next_cursor"])
    assert not set(rest) & set(world["in_b"])
    assert bodies[0]["total_count"] == 3


def test_membership_cache_lost_or_redis_down(client, state, settings, world):
    viewer = bearer(MEMBER_A)
    expected = _expected(world, MEMBER_A)
    _walk(client, viewer, feed_type="recent")
    clear_keyspace(state.cache)  # the member set, counts and sorted sets are rebuilt
    seen, bodies = _walk(client, viewer, feed_type="recent", limit=2)
    assert set(seen) == expected and bodies[0]["total_count"] == len(expected)
    down = create_app({"SETTINGS": settings.replace(redis_url="redis://127.0.0.1:1/0"),
                       "TESTING": True})
    try:
        c = down.test_client()
        for who in ("anon", OUTSIDER, MEMBER_A, "admin"):
            for feed_type in ("recent", "trending"):
                seen, bodies = _walk(c, _headers(who), feed_type=feed_type, limit=2)
                assert set(seen) == _expected(world, who), (who, feed_type)
                assert bodies[0]["total_count"] == len(_expected(world, who))
        # Postgres applies the rule in the page's own statements (the order, the rows,
        # the count): none more for the member set.
        sql = _sql()
        body = c.get("/community/feed", query_string={"feed_type": "recent", "limit": 50},
                     headers=viewer).get_json()
        assert _sql() - sql == 3 and body["total_count"] == len(expected)
        _join(c, MEMBER_A, world["a"], member=False)  # committed; its cache apply is lost
    finally:
        down.extensions["hc"].close()
    # Back on the Redis app: the relay / version check drops the stale member set.
    relay_outbox(state.db, state.applier, min_age=0)
    seen, _ = _walk(client, viewer, feed_type="recent")
    assert set(seen) == set(world["public"])


def test_sparse_visibility_is_bounded_per_page(client, state, monkeypatch):
    """A non-member over a feed of mostly collective posts: each page examines at most
    the scan budget, answers what it found with ``has_more`` true and a cursor, and the
    walk still ends with exactly the public posts."""
    monkeypatch.setattr(community_feed_walk, "SCAN_BUDGET", 8)
    coll = _collective(client, "big")
    _join(client, AUTHOR, coll)
    public = [_post(client, 30)]
    hidden = [_post(client, AUTHOR, collective_id=coll) for _ in range(30)]
    public.append(_post(client, 30))
    hidden += [_post(client, AUTHOR, collective_id=coll) for _ in range(10)]
    examined: list[int] = []
    real = cache_posts.page_posts

    def counting(deps, ids, *args, **kwargs):
        examined.append(len(ids))
        return real(deps, ids, *args, **kwargs)

    monkeypatch.setattr(cache_posts, "page_posts", counting)
    for feed_type in ("recent", "trending"):
        cursor, seen, pages = None, [], 0
        while True:
            examined.clear()
            q = {"feed_type": feed_type, "limit": 2, **({"cursor": cursor} if cursor else {})}
            body = client.get("/community/feed", query_string=q,
                              headers=bearer(OUTSIDER)).get_json()
            assert sum(examined) <= 8, examined  # the scan budget
            assert body["total_count"] == 2
            seen += [p["id"] for p in body["posts"]]
            pages += 1
            if not body["has_more"]:
                break
            cursor = body["next_cursor"]
        assert sorted(seen) == sorted(public), feed_type
        assert pages > 2  # the budget did cut pages short
        member_seen, _ = _walk(client, bearer(AUTHOR), feed_type=feed_type, limit=50)
        assert set(member_seen) == set(public + hidden)


@pytest.mark.parametrize("who", [MEMBER_A, "anon", "admin"])
def test_warm_pages_cost_what_they_cost_without_collectives(client, world, who):
    """The member set rides in the page's count pipeline: a warm page of each feed costs
    the same SQL statements (none: the posts are cached entities) and Redis round trips
    as it costs anyone."""
    headers = _headers(who)
    # recent: the count + the order, then the posts; following too (the followees this
    # process saw last, confirmed by their version copy read with the count); trending:
    # one (the snapshot's range is remembered, the posts ride with the count and the
    # walk's pointer).
    trips = {"recent": 2, "trending": 1, "following": 2}
    for feed_type, want in trips.items():
        if feed_type == "following" and who == "anon":
            continue
        q = {"feed_type": feed_type, "limit": 50}
        for _ in range(2):
            client.get("/community/feed", query_string=q, headers=headers)
        sql, before = _sql(), _redis_trips()
        body = client.get("/community/feed", query_string=q, headers=headers).get_json()
        assert body["posts"], feed_type
        assert (_sql() - sql, _redis_trips() - before) == (0, want), feed_type


def test_remembered_trending_pages_follow_membership_deletes_and_expiry(client, state,
                                                                        world):
    """A trending page whose snapshot range this process read before sends its post reads
    with its count (one round trip, no SQL), planned with the viewer's visibility of
    their last page: after a leave and a join, a delete, and with the snapshot's copy
    gone from Redis, each page is still exactly what Postgres alone answers, and an
    expired walk's cursor is still refused."""
    viewer = bearer(MEMBER_A)

    def page(cursor=None):
        q = {"feed_type": "trending", "limit": 2, **({"cursor": cursor} if cursor else {})}
        r = client.get("/community/feed", query_string=q, headers=viewer)
        return r.status_code, r.get_json()

    def pages():
        cursors, bodies = [None], []
        while True:
            status, body = page(cursors[-1])
            assert status == 200, body
            bodies.append(body)
            if not body["has_more"]:
                return cursors, bodies
            cursors.append(body["next_cursor"])

    def from_postgres(cursors):
        state.cache.enabled = False
        try:
            return [page(c)[1] for c in cursors]
        finally:
            state.cache.enabled = True

    cursors, bodies = pages()
    assert {p["id"] for b in bodies for p in b["posts"]} == _expected(world, MEMBER_A)
    for cursor, body in zip(cursors, bodies, strict=True):  # each range read: remembered
        sql, trips = _sql(), _redis_trips()
        assert page(cursor) == (200, body)
        assert (_sql() - sql, _redis_trips() - trips) == (0, 1)
    _join(client, MEMBER_A, world["a"], member=False)
    _join(client, MEMBER_A, world["b"])
    client.delete(f"/community/posts/{world['public'][0]}", headers=bearer(AUTHOR))
    now = [page(c)[1] for c in cursors]
    assert now == from_postgres(cursors)
    seen = {p["id"] for b in now for p in b["posts"]}
    assert seen == set(world["public"][1:] + world["in_b"])
    r = state.cache.redis
    r.delete(cf.CommunityKeys(state.cache.keys).snapshot(
        community_feed_walk.TrendingSource.resume(state, _cursor_data(cursors[1])).sid))
    assert [page(c)[1] for c in cursors] == now  # the copy restored from its row
    with state.db.session() as s:  # expired: the row deleted by the job, the copy gone
        s.execute(delete(TrendingSnapshot))
        s.commit()
    clear_keyspace(state.cache)
    status, body = page(cursors[1])
    assert status == 400 and body["code"] == "invalid_cursor"


def _cursor_data(cursor):
    return orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))


def test_a_miss_that_finds_the_set_filled_meanwhile_does_not_load_it_again(client, state,
                                                                          world):
    """A stampede's late requests (their page read missed the viewer's sets before the
    first fill landed) read that fill instead of loading from Postgres again: one load
    per set, whichever request wins."""
    clear_keyspace(state.cache)
    # The first request to miss fills each set: it loads from Postgres.
    sql = _sql()
    assert cf.collectives(state, MEMBER_A) == {world["a"]}
    assert cf.blocked(state, MEMBER_A) == frozenset()
    assert cf.followees(state, MEMBER_A)
    assert _sql() > sql
    # The late ones find the sets there once their own fill would start: no SQL.
    sql = _sql()
    assert cf.collectives(state, MEMBER_A) == {world["a"]}
    assert cf.blocked(state, MEMBER_A) == frozenset()
    with pytest.raises(LeaseHeld):
        cf.fill_followees(state, MEMBER_A, after_miss=True)
    assert _sql() == sql
    # A repair still replaces what is there (it does not take the fill for a miss).
    sql = _sql()
    cf.rebuild(state, MEMBER_A)
    assert _sql() > sql
