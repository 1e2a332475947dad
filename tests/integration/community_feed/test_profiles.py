"""Profiles and seed 002's post shape, through HTTP: the profile endpoints, their
validation, ``inspired_by_post_id`` on create, and a profile change showing in every feed
at the next read, cached pages included."""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import text

DEFAULT = {"display_name": "Unknown", "avatar_url": None, "subscription_tier": "free"}
POST_KEYS = {
    "id", "user_id", "author_id", "title", "description", "tags", "post_type", "asset_type",
    "asset_url", "collective_id", "show_prompt", "prompt", "is_featured",
    "inspired_by_post_id", "created_at", "updated_at", "like_count", "comment_count",
    "view_count", "author",
}


def hits(path: str) -> float:
    return REGISTRY.get_sample_value("cache_events_total",
                                     {"path": path, "outcome": "hit"}) or 0.0


def make_post(client, auth, user_id, **body):
    body.setdefault("title", "hello")
    r = client.post("/community/posts", json=body, headers=auth(user_id))
    assert r.status_code == 201, r.get_json()
    return r.get_json()


def post_count(state) -> int:
    with state.db.session() as s:
        return s.execute(text("SELECT count(*) FROM posts")).scalar_one()


# --- the endpoints ------------------------------------------------------------------------


def test_own_profile_defaults_then_put_keeps_unsent_fields(client, auth):
    r = client.get("/api/user/profile/", headers=auth(5))
    assert r.status_code == 200 and r.get_json() == {"id": 5, **DEFAULT}
    assert client.get("/api/user/profile/").status_code == 401
    r = client.put("/api/user/profile/", json={"display_name": "Ada"}, headers=auth(5))
    assert r.status_code == 200
    assert r.get_json() == {**DEFAULT, "id": 5, "display_name": "Ada"}
    r = client.put("/api/user/profile/", json={"avatar_url": "https://img.example/a.png"},
                   headers=auth(5))
    assert r.get_json() == {"id": 5, "display_name": "Ada",
                            "avatar_url": "https://img.example/a.png",
                            "subscription_tier": "free"}
    assert client.get("/api/user/profile", headers=auth(5)).get_json() == r.get_json()
    r = client.put("/api/user/profile/", json={"avatar_url": None}, headers=auth(5))
    assert r.get_json()["avatar_url"] is None and r.get_json()["display_name"] == "Ada"
    assert client.get("/api/user/profile/", headers=auth(6)).get_json() == {"id": 6, **DEFAULT}


@pytest.mark.parametrize("body,field", [
    ({"display_name": ""}, "display_name"),
    ({"display_name": "   "}, "display_name"),
    ({"display_name": "x" * 101}, "display_name"),
    ({"display_name": 5}, "display_name"),
    ({"avatar_url": "ftp://host/a.png"}, "avatar_url"),
    ({"avatar_url": "javascript:alert(1)"}, "avatar_url"),
    ({"avatar_url": "https://h.example/" + "a" * 2040}, "avatar_url"),
    ({"display_name": "Fine", "avatar_url": "not a url"}, "avatar_url"),
    ({"subscription_tier": "pro"}, "subscription_tier"),  # only an admin sets the tier
])
def test_own_profile_bad_input_is_400_naming_the_field_and_writes_nothing(
        client, auth, body, field):
    client.put("/api/user/profile/", json={"display_name": "Before"}, headers=auth(5))
    r = client.put("/api/user/profile/", json=body, headers=auth(5))
    assert r.status_code == 400, r.get_json()
    assert r.get_json()["code"] == "validation_error" and field in r.get_json()["details"]
    assert client.get("/api/user/profile/", headers=auth(5)).get_json() == {
        "id": 5, **DEFAULT, "display_name": "Before"}


def test_profile_text_round_trips_and_nul_is_refused(client, auth):
    name = "Zoë 🚀 مرحبا" + "x" * 89  # 100 characters, more bytes
    r = client.put("/api/user/profile/", json={"display_name": name}, headers=auth(5))
    assert r.status_code == 200 and r.get_json()["display_name"] == name
    r = client.put("/api/user/profile/", json={"display_name": "a\x00b"}, headers=auth(5))
    assert r.status_code == 400
    assert client.get("/api/user/profile/", headers=auth(5)).get_json()["display_name"] == name


def test_admin_sets_anyones_profile_and_tier(client, auth, admin_headers):
    url = "/api/users/42/profile/"
    assert client.put(url, json={"subscription_tier": "pro"}, headers=auth(42)).status_code == 403
    assert client.put(url, json={"subscription_tier": "pro"}).status_code == 401
    r = client.put(url, json={"subscription_tier": "pro", "display_name": "Forty-two"},
                   headers=admin_headers)
    assert r.status_code == 200
    assert r.get_json() == {"id": 42, "display_name": "Forty-two", "avatar_url": None,
                            "subscription_tier": "pro"}
    for bad in ({"subscription_tier": "gold"}, {"subscription_tier": None},
                {"subscription_tier": "plus", "avatar_url": "nope"}):
        r = client.put(url, json=bad, headers=admin_headers)
        assert r.status_code == 400 and set(r.get_json()["details"]) & set(bad)
    assert client.get("/api/user/profile/", headers=auth(42)).get_json()["subscription_tier"] \
        == "pro"
    # The user edits their own name; the tier an admin gave stays.
    client.put("/api/user/profile/", json={"display_name": "Me"}, headers=auth(42))
    assert client.get("/api/user/profile/", headers=auth(42)).get_json() == {
        "id": 42, "display_name": "Me", "avatar_url": None, "subscription_tier": "pro"}
    assert client.put("/api/users/0/profile/", json={}, headers=admin_headers).status_code == 404
    assert client.put(f"/api/users/{2**63}/profile/", json={},
                      headers=admin_headers).status_code == 404


# --- the post shape ------------------------------------------------------------------------


def test_post_shape_in_every_feed(client, auth, admin_headers):
    client.put("/api/users/3/profile/", headers=admin_headers, json={
        "display_name": "Three", "avatar_url": "http://a.example/3.png",
        "subscription_tier": "plus"})
    created = make_post(client, auth, 3, title="first")
    author = {"id": 3, "display_name": "Three", "avatar_url": "http://a.example/3.png",
              "subscription_tier": "plus"}
    assert set(created) == POST_KEYS | {"is_liked_by_viewer"}
    assert created["author"] == author and created["user_id"] == created["author_id"] == 3
    assert created["updated_at"] == created["created_at"] and created["is_featured"] is False
    client.post("/community/users/3/follow", headers=auth(9))
    for feed_type in ("trending", "recent", "following"):
        r = client.get("/community/feed", query_string={"feed_type": feed_type},
                       headers=auth(9))
        [post] = r.get_json()["posts"]
        assert post == {**created, "is_liked_by_viewer": False}, feed_type
    for ordering in ("personalized", "chronological"):
        r = client.get(f"/api/posts/?ordering={ordering}", headers=auth(9))
        [post] = r.get_json()["results"]
        assert set(post) >= POST_KEYS and post["author"] == author, ordering
        assert {k: post[k] for k in POST_KEYS} == {k: created[k] for k in POST_KEYS}


def test_inspired_by_must_be_a_live_post_the_caller_sees(client, auth, state, admin_headers):
    origin = make_post(client, auth, 2, title="origin")
    child = make_post(client, auth, 3, title="child", inspired_by_post_id=origin["id"])
    assert child["inspired_by_post_id"] == origin["id"]
    r = client.get("/community/feed?feed_type=recent", headers=auth(9))
    assert [p["inspired_by_post_id"] for p in r.get_json()["posts"]] == [origin["id"], None]
    r = client.get("/api/posts/?ordering=chronological", headers=auth(9))
    assert [p["inspired_by_post_id"] for p in r.get_json()["results"]] == [origin["id"], None]

    coll = client.post("/api/collectives/", json={"name": "c"}, headers=admin_headers
                       ).get_json()["id"]
    client.post(f"/api/collectives/{coll}/join/", headers=auth(4))
    members_only = make_post(client, auth, 4, title="inner", collective_id=coll)
    gone = make_post(client, auth, 2, title="gone")
    client.delete(f"/community/posts/{gone['id']}", headers=auth(2))
    before = post_count(state)
    for bad in (gone["id"], 999_999, 0, -1, 2**63, "1", True, 1.5):
        r = client.post("/community/posts", json={"title": "x", "inspired_by_post_id": bad},
                        headers=auth(3))
        assert r.status_code == 400, (bad, r.get_json())
        assert "inspired_by_post_id" in r.get_json()["details"], bad
    r = client.post("/community/posts", headers=auth(3),
                    json={"title": "x", "inspired_by_post_id": members_only["id"]})
    assert r.status_code == 400 and "inspired_by_post_id" in r.get_json()["details"]
    assert post_count(state) == before  # nothing half-written
    # A member (and an admin) may be inspired by a collective's post; null means none.
    make_post(client, auth, 4, inspired_by_post_id=members_only["id"])
    r = client.post("/community/posts", headers=admin_headers,
                    json={"title": "a", "inspired_by_post_id": members_only["id"]})
    assert r.status_code == 201
    assert make_post(client, auth, 3, inspired_by_post_id=None)["inspired_by_post_id"] is None


# --- a profile change at the next read, cached pages included -----------------------------


def test_profile_change_shows_in_cached_community_pages(client, auth):
    for i in range(3):
        make_post(client, auth, 3, title=f"p{i}")
    client.post("/community/users/3/follow", headers=auth(9))

    def authors(feed_type: str) -> set[str]:
        r = client.get("/community/feed", query_string={"feed_type": feed_type, "limit": 2},
                       headers=auth(9))
        assert r.status_code == 200
        page = r.get_json()
        assert page["has_more"] and page["total_count"] == 3
        return {p["author"]["display_name"] for p in page["posts"]}

    for feed_type in ("recent", "following", "trending"):
        assert authors(feed_type) == {"Unknown"}  # fills the feed's cache
    before = {f: hits(f"community_feed:{f}") for f in ("recent", "following", "trending")}
    client.put("/api/user/profile/", json={"display_name": "Renamed"}, headers=auth(3))
    for feed_type in ("recent", "following", "trending"):
        assert authors(feed_type) == {"Renamed"}, feed_type
        # ...served from the cache (a hit), not because the change dropped it.
        assert hits(f"community_feed:{feed_type}") == before[feed_type] + 1, feed_type


def test_profile_change_shows_in_a_cached_personalized_page(client, auth, admin_headers):
    for i in range(3):
        make_post(client, auth, 3 + i, title=f"p{i}")

    def first_page() -> dict[int, dict]:
        r = client.get("/api/posts/", headers=auth(9))
        assert r.status_code == 200
        return {p["author_id"]: p["author"] for p in r.get_json()["results"]}

    assert first_page()[4] == {"id": 4, **DEFAULT}  # computes and caches the ranking
    cached = hits("ranked_feed")
    assert first_page()[4] == {"id": 4, **DEFAULT} and hits("ranked_feed") == cached + 1
    client.put("/api/users/4/profile/", headers=admin_headers, json={
        "display_name": "Four", "avatar_url": "https://a.example/4", "subscription_tier": "pro"})
    page = first_page()
    assert hits("ranked_feed") == cached + 2  # the same cached ranking...
    assert page[4] == {"id": 4, "display_name": "Four", "avatar_url": "https://a.example/4",
                       "subscription_tier": "pro"}  # ...with the new author
    assert page[3] == {"id": 3, **DEFAULT}
