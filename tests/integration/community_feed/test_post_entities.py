"""Posts from the entity cache (DESIGN rule 7): a warm community page sends no SQL and at
most two Redis round trips (following too; trending one), and a warm personalized page no SQL;
on a single Redis a page's posts are one reply to parse, whatever their number; the
assembled bytes match ``FeedOut`` / ``RankedPageOut`` and what Postgres alone answers;
likes, comments, views, praise, profile changes and deletes show on the next page without
a refill; an evicted post is one batched fill; a slow fill never publishes over a newer
write."""

from __future__ import annotations

import pytest
from redis.cluster import RedisCluster

from cache import posts as cache_posts
from service.ranked_feed import RankedPageOut
from service.schemas import FeedOut
from tests.support.community_feed import make_post
from tests.support.metrics import Costs, redis_replies

AUTHOR, OTHER, VIEWER = 21, 22, 23
# Trending: one (the snapshot's range, immutable, is remembered by the process; the posts
# ride with the count).
WARM_TRIPS = {"recent": 2, "trending": 1, "following": 2}


def feed(client, headers, feed_type="recent", **params):
    r = client.get("/community/feed", query_string={"feed_type": feed_type, "limit": 10,
                                                    **params}, headers=headers)
    assert r.status_code == 200, r.get_json()
    return r.get_json()


def personalized(client, headers):
    r = client.get("/api/posts/", query_string={"page_size": 10}, headers=headers)
    assert r.status_code == 200, r.get_json()
    return r.get_json()


def by_id(body, key="posts"):
    return {p["id"]: p for p in body[key]}


@pytest.fixture
def world(client, auth, admin_headers):
    r = client.put(f"/api/users/{AUTHOR}/profile/", headers=admin_headers,
                   json={"display_name": "Ada", "subscription_tier": "pro"})
    assert r.status_code == 200, r.get_json()
    posts = [make_post(client, auth, AUTHOR, title=f"p{n}", tags=["art"],
                       asset_type="image", show_prompt=bool(n % 2), prompt="secret")["id"]
             for n in range(3)]
    posts.append(make_post(client, auth, OTHER, title="other")["id"])  # no profile row
    client.post(f"/community/users/{AUTHOR}/follow", headers=auth(VIEWER))
    client.post(f"/community/users/{OTHER}/follow", headers=auth(VIEWER))
    client.post(f"/community/posts/{posts[0]}/like", headers=auth(VIEWER))
    client.post(f"/community/posts/{posts[0]}/like", headers=auth(OTHER))
    client.post(f"/community/posts/{posts[1]}/comments", json={"body": "hi"},
                headers=auth(OTHER))
    return posts


@pytest.mark.parametrize("feed_type", ["recent", "trending", "following"])
def test_warm_page_is_0_sql_and_matches_the_schema_and_postgres(
        client, auth, state, world, monkeypatch, feed_type):
    headers = auth(VIEWER)
    cold = feed(client, headers, feed_type)
    costs = Costs(monkeypatch)
    warm, sql, trips = costs.of(lambda: feed(client, headers, feed_type))
    assert sql == 0
    # Round trips per node: on a cluster each pipeline is one per node, in parallel.
    nodes = len(state.cache.redis.get_primaries()) if isinstance(
        state.cache.redis, RedisCluster) else 1
    assert WARM_TRIPS[feed_type] <= trips <= WARM_TRIPS[feed_type] * nodes
    assert warm == cold
    assert set(by_id(warm)) == set(world)
    top = by_id(warm)[world[0]]
    assert (top["like_count"], top["is_liked_by_viewer"], top["prompt"]) == (2, True, None)
    assert top["author"] == {"id": AUTHOR, "display_name": "Ada", "avatar_url": None,
                             "subscription_tier": "pro"}
    assert by_id(warm)[world[1]]["prompt"] == "secret"
    assert by_id(warm)[world[1]]["comment_count"] == 1
    assert by_id(warm)[world[3]]["author"]["display_name"] == "Unknown"
    schema = FeedOut()
    assert schema.validate(warm) == {}
    assert schema.dump(schema.load(warm)) == warm
    state.cache.enabled = False  # Postgres alone: the same document
    try:
        assert feed(client, headers, feed_type) == warm
    finally:
        state.cache.enabled = True
    print(f"\n[{feed_type}] warm page: {sql} SQL, {trips} Redis round trips")


def test_filtered_pages_and_anonymous_from_entities(client, auth, world, monkeypatch):
    for headers in ({}, auth(VIEWER)):
        cold = feed(client, headers, "trending", asset_type="image", tags="art")
        assert set(by_id(cold)) == set(world[:3])
        costs = Costs(monkeypatch)
        warm, sql, _ = costs.of(lambda h=headers: feed(client, h, "trending",
                                                       asset_type="image", tags="art"))
        assert warm == cold
        assert sql == 0  # the filter's probe (posts.count_upto) is cached too
        assert not any(p["is_liked_by_viewer"] for p in by_id(feed(client, {})).values())


def test_writes_show_on_the_next_page_in_place(client, auth, admin_headers, state, world,
                                               monkeypatch):
    headers = auth(VIEWER)
    feed(client, headers)  # warm
    first = world[0]
    client.delete(f"/community/posts/{first}/like", headers=auth(VIEWER))
    client.post(f"/community/posts/{world[2]}/like", headers=auth(VIEWER))
    client.post(f"/community/posts/{first}/comments", json={"body": "x"}, headers=auth(OTHER))
    client.post(f"/community/posts/{first}/view", headers=auth(OTHER))
    assert client.put("/api/user/profile/", json={"display_name": "Ada L."},
                      headers=auth(AUTHOR)).status_code == 200
    costs = Costs(monkeypatch)
    page, sql, _ = costs.of(lambda: feed(client, headers))
    assert sql == 0  # applied in place: no refill
    posts = by_id(page)
    assert (posts[first]["like_count"], posts[first]["is_liked_by_viewer"],
            posts[first]["comment_count"], posts[first]["view_count"]) == (1, False, 1, 1)
    assert (posts[world[2]]["like_count"], posts[world[2]]["is_liked_by_viewer"]) == (1, True)
    assert {posts[p]["author"]["display_name"] for p in world[:3]} == {"Ada L."}
    assert posts[world[3]]["author"]["display_name"] == "Unknown"
    # Another viewer shares the entities, with their own likes.
    assert by_id(feed(client, auth(OTHER)))[first]["is_liked_by_viewer"] is True
    # A delete drops the entity: gone from the next page, and never refilled.
    assert client.delete(f"/community/posts/{world[1]}", headers=admin_headers).status_code \
        == 204
    assert not state.cache.redis.exists(cache_posts.key(state.cache.keys, world[1]))
    for feed_type in ("recent", "trending", "following"):
        assert world[1] not in by_id(feed(client, headers, feed_type)), feed_type
    assert not state.cache.redis.exists(cache_posts.key(state.cache.keys, world[1]))


def test_evicted_posts_are_one_batched_fill(client, auth, state, world, monkeypatch):
    headers = auth(VIEWER)
    before = feed(client, headers)
    r, keys = state.cache.redis, state.cache.keys
    assert r.delete(*(cache_posts.key(keys, p) for p in world[:3])) == 3
    costs = Costs(monkeypatch)
    after, sql, _ = costs.of(lambda: feed(client, headers))
    assert after == before and sql == 1
    # The version copies lost too (a Redis restart): one more statement, never a reset.
    r.delete(*(cache_posts.key(keys, p) for p in world),
             *(keys.version(cache_posts.scope(p)) for p in world))
    after, sql, _ = costs.of(lambda: feed(client, headers))
    assert after == before and sql == 2
    # The viewer's likes set evicted alone: one fill.
    r.delete(cache_posts.likes_key(keys, VIEWER))
    after, sql, _ = costs.of(lambda: feed(client, headers))
    assert after == before and sql == 1
    assert costs.of(lambda: feed(client, headers))[1] == 0


def test_a_user_with_too_many_likes_reads_them_from_postgres(client, auth, state, world,
                                                             monkeypatch):
    monkeypatch.setattr(cache_posts, "LIKES_CACHE_MAX", 1)
    client.post(f"/community/posts/{world[1]}/like", headers=auth(VIEWER))
    headers = auth(VIEWER)
    page = feed(client, headers)
    liked = {p for p, post in by_id(page).items() if post["is_liked_by_viewer"]}
    assert liked == {world[0], world[1]}
    marks = state.cache.redis.smembers(cache_posts.likes_key(state.cache.keys, VIEWER))
    assert marks >= {b"0", b"-1"}
    costs = Costs(monkeypatch)
    again, sql, _ = costs.of(lambda: feed(client, headers))
    assert again == page and sql == 1  # the page's likes: one indexed statement


def test_a_slow_fill_never_publishes_over_a_newer_write(client, auth, state, world,
                                                        monkeypatch):
    import storage.posts as storage
    from service import community_feed_ops

    headers = auth(VIEWER)
    feed(client, headers)
    r, key = state.cache.redis, cache_posts.key(state.cache.keys, world[3])
    r.delete(key)  # evicted
    original = storage.post_entities

    def slow(session, ids):
        rows = original(session, ids)  # like_count 0
        monkeypatch.setattr(storage, "post_entities", original)
        assert community_feed_ops.like_post(state, OTHER, world[3], True)  # commits, applies
        return rows

    monkeypatch.setattr(storage, "post_entities", slow)
    feed(client, headers)
    assert not r.exists(key), "the fill loaded before the like must not be published"
    assert by_id(feed(client, headers))[world[3]]["like_count"] == 1


def test_personalized_page_from_entities(client, auth, state, world, monkeypatch):
    headers = auth(VIEWER)
    client.post(f"/api/posts/{world[2]}/praise/", headers=headers)
    cold = personalized(client, headers)
    costs = Costs(monkeypatch)
    warm, sql, trips = costs.of(lambda: personalized(client, headers))
    assert sql == 0 and warm == cold
    schema = RankedPageOut()
    assert schema.validate(warm) == {}
    assert schema.dump(schema.load(warm)) == warm
    posts = by_id(warm, "results")
    assert set(posts) == set(world)
    assert (posts[world[2]]["praise_count"], posts[world[0]]["like_count"]) == (1, 2)
    assert posts[world[0]]["author"]["display_name"] == "Ada"
    # Another viewer's trophy changes the shared entity in place: this viewer's cached
    # ranking shows the new count with no statement.
    client.post(f"/api/posts/{world[0]}/trophy/", headers=auth(OTHER))
    page, sql, _ = costs.of(lambda: personalized(client, headers))
    assert sql == 0 and by_id(page, "results")[world[0]]["trophy_count"] == 1
    state.cache.enabled = False  # Postgres alone: the same posts
    try:
        down = by_id(personalized(client, headers), "results")
    finally:
        state.cache.enabled = True
    for post_id, post in by_id(page, "results").items():
        assert {k: v for k, v in post.items() if k != "score"} == {
            k: v for k, v in down[post_id].items() if k != "score"}
    print(f"\n[personalized] warm page: {sql} SQL, {trips} Redis round trips")


def test_a_filter_nothing_matches_is_answered_from_redis_until_a_post_matches(
        client, auth, world, monkeypatch):
    headers = auth(VIEWER)
    empty = {"posts": [], "total_count": 0, "has_more": False, "next_cursor": None}
    for feed_type in ("recent", "trending", "following"):
        assert feed(client, headers, feed_type, tags="fresh") == empty  # cold: the probe
    costs = Costs(monkeypatch)
    for feed_type in ("recent", "trending", "following"):
        body, sql, trips = costs.of(lambda f=feed_type: feed(client, headers, f, tags="fresh"))
        assert (body, sql, trips) == (empty, 0, 1)
    created = make_post(client, auth, AUTHOR, title="fresh", tags=["fresh"])["id"]
    # (Trending: a new post is in the walks that start from the next snapshot on.)
    for feed_type in ("recent", "following"):
        body = feed(client, headers, feed_type, tags="fresh")
        assert [p["id"] for p in body["posts"]] == [created] and body["total_count"] == 1


@pytest.mark.parametrize("feed_type", ["trending", "recent", "following"])
def test_every_assembled_page_of_a_walk_is_the_schemas_document(
        client, auth, admin_headers, world, feed_type):
    """Each page of a whole walk, one post a page (cursor pages, the last page), warm and
    cold, for an anonymous caller, a viewer and an admin: the bytes assembled from the
    cache are a valid ``FeedOut`` and exactly what the schema dumps of them."""
    schema = FeedOut()
    # (The following feed: the viewer follows both authors; admins and anonymous
    # callers follow nobody.)
    callers = [auth(VIEWER)] + ([admin_headers, {}] if feed_type != "following" else [])
    for headers in callers:
        for _ in range(2):  # cold, then warm
            seen, cursor = [], None
            while True:
                extra = {"cursor": cursor} if cursor else {}
                body = feed(client, headers, feed_type, limit=1, **extra)
                assert schema.validate(body) == {}
                assert schema.dump(schema.load(body)) == body
                assert all(set(p) == set(schema.fields["posts"].inner.schema.fields)
                           for p in body["posts"])
                seen += [p["id"] for p in body["posts"]]
                cursor = body["next_cursor"]
                if cursor is None:
                    break
            assert sorted(seen) == sorted(world)


@pytest.mark.parametrize("path", ["personalized", "recent", "trending"])
def test_a_warm_pages_posts_are_one_reply_on_a_single_redis(
        client, auth, state, world, monkeypatch, path):
    """On a single Redis the page's post entities are read with one script call: the
    replies redis-py parses in Python do not grow with the posts on the page. (A cluster
    reads one HGETALL per post, one pipeline per node.)"""
    if isinstance(state.cache.redis, RedisCluster):
        pytest.skip("a cluster reads one HGETALL per post")
    headers = auth(VIEWER)

    def page(n: int) -> list[int]:
        if path == "personalized":
            r = client.get("/api/posts/", query_string={"page_size": n}, headers=headers)
            assert r.status_code == 200, r.get_json()
            return [p["id"] for p in r.get_json()["results"]]
        return [p["id"] for p in feed(client, headers, path, limit=n)["posts"]]

    replies = redis_replies(monkeypatch)
    counts = {}
    for n in (1, len(world)):
        page(n)  # cold: fills the ranking, the snapshot, the entities
        shown, counts[n] = replies.of(lambda n=n: page(n))
        assert len(shown) == n
    assert counts[1] == counts[len(world)], counts
