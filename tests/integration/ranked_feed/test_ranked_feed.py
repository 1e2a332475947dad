"""Personalized feed endpoints: shapes, validation, chronological order, and the writes
(hearts, praise, trophies, fellows, collectives, preferences) with exact counts."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlalchemy import text

from service import ranked_feed
from tests.support.ranked_feed_data import FROZEN_NOW


@pytest.fixture
def posts(state, monkeypatch):
    """Five live posts by users 2..6 (newest last) and one deleted post; collective 1."""
    monkeypatch.setattr(ranked_feed, "now", lambda: FROZEN_NOW)
    with state.db.session() as s:
        coll = s.execute(text("INSERT INTO collectives (name) VALUES ('c') RETURNING id")
                         ).scalar_one()
        ids = [s.execute(text(
            "INSERT INTO posts (author_id, title, post_type, collective_id, created_at) "
            "VALUES (:a, :t, :pt, :c, :ca) RETURNING id"),
            {"a": 2 + i, "t": f"P{i}", "pt": "prayer" if i % 2 else "post",
             "c": coll if i == 0 else None,
             "ca": FROZEN_NOW - timedelta(hours=10 - i)}).scalar_one() for i in range(5)]
        deleted = s.execute(text(
            "INSERT INTO posts (author_id, title, deleted_at) VALUES (2, 'gone', now()) "
            "RETURNING id")).scalar_one()
        s.commit()
    return {"ids": ids, "deleted": deleted, "collective": coll}


def count(state, sql: str, **params) -> int:
    with state.db.session() as s:
        return s.execute(text(sql), params).scalar_one()


def test_anonymous_gets_chronological(client, posts):
    for query in ("", "?ordering=personalized"):
        r = client.get(f"/api/posts/{query}")
        assert r.status_code == 200
        body = r.get_json()
        # Public posts only: P0 is in a collective (members and admins see it).
        assert body["count"] == 4 and body["next"] is None and body["previous"] is None
        assert [p["id"] for p in body["results"]] == posts["ids"][1:][::-1]
        post = body["results"][0]
        assert post["score"] is None and post["created_at"].endswith("Z")
        author = post["author_id"]
        assert post["author"] == {"id": author, "display_name": "Unknown",
                                  "avatar_url": None, "subscription_tier": "free"}
        assert post["user_id"] == author and post["updated_at"].endswith("Z")


def test_signed_in_default_is_personalized(client, auth, posts):
    r = client.get("/api/posts/?explain=true", headers=auth(9))
    body = r.get_json()
    assert body["count"] == 4  # not a member of P0's collective
    scores = [p["score"] for p in body["results"]]
    assert scores == sorted(scores, reverse=True) and all(s > 0 for s in scores)
    components = body["results"][0]["score_components"]
    assert components["viewed"] is False and components["viewed_factor"] == 1.0
    assert 0 < components["recency"] <= 100
    r = client.get("/api/posts/?ordering=chronological", headers=auth(9))
    assert [p["id"] for p in r.get_json()["results"]] == posts["ids"][1:][::-1]


def test_pagination_links_and_bad_pages(client, auth, posts):
    # User 9 sees 4 posts (not P0: it is in a collective they are not in).
    r = client.get("/api/posts/?page_size=1&page=2&explain=true", headers=auth(9))
    body = r.get_json()
    assert len(body["results"]) == 1
    assert body["next"].endswith("page=3") and "page_size=1" in body["next"]
    assert body["previous"].endswith("page=1")
    r = client.get("/api/posts/?page_size=2&page=2", headers=auth(9))
    assert r.get_json()["count"] == 4 and r.get_json()["next"] is None  # the walk's end
    # Past the end of a personalized walk: empty, never a 404 (a ranking recomputed
    # between pages may be shorter); chronological pages past the end are a 404.
    r = client.get("/api/posts/?page_size=2&page=3", headers=auth(9))
    body = r.get_json()
    assert r.status_code == 200 and body["results"] == [] and body["next"] is None
    assert body["count"] == 4 and body["previous"].endswith("page=2")
    r = client.get("/api/posts/?page_size=2&page=3&ordering=chronological", headers=auth(9))
    assert r.status_code == 404 and r.get_json()["code"] == "invalid_page"
    for bad in ("page=0", "page=x", "page_size=0", "page_size=51", "ordering=top",
                "explain=maybe", "page=100001"):
        r = client.get(f"/api/posts/?{bad}", headers=auth(9))
        assert r.status_code == 400, bad
        assert r.get_json()["code"] == "validation_error"
    assert client.get("/api/posts/?_=123", headers=auth(9)).status_code == 200


def test_viewed_posts_rank_lower(client, auth, state, posts):
    newest = posts["ids"][-1]
    first = client.get("/api/posts/", headers=auth(9)).get_json()["results"]
    assert first[0]["id"] == newest
    with state.db.session() as s:
        s.execute(text("INSERT INTO post_views (post_id, viewer_id) VALUES (:p, 9)"),
                  {"p": newest})
        s.commit()
    r = client.get("/api/posts/?invalidate_cache=true&explain=true", headers=auth(9))
    results = r.get_json()["results"]
    viewed = next(p for p in results if p["id"] == newest)
    assert results[0]["id"] != newest
    assert viewed["score_components"]["viewed"] is True
    assert viewed["score"] == pytest.approx(first[0]["score"] / 2)


def test_heart_is_a_like(client, auth, state, posts):
    pid = posts["ids"][1]
    assert client.post(f"/api/posts/{pid}/heart/").status_code == 401
    answers = [client.post(f"/api/posts/{pid}/heart/", headers=auth(9)) for _ in range(2)]
    assert [(r.status_code, r.get_json()) for r in answers] == [
        (200, {"hearted": True}), (200, {"hearted": False})]
    assert count(state, "SELECT like_count FROM posts WHERE id = :p", p=pid) == 1
    assert count(state, "SELECT count(*) FROM post_likes WHERE post_id = :p", p=pid) == 1
    # The same like as the community feed's: liking a hearted post changes nothing.
    assert client.post(f"/community/posts/{pid}/like", headers=auth(9)).get_json() == {
        "liked": False}
    answers = [client.delete(f"/api/posts/{pid}/heart/", headers=auth(9)) for _ in range(2)]
    assert [r.get_json() for r in answers] == [{"hearted": True}, {"hearted": False}]
    assert count(state, "SELECT like_count FROM posts WHERE id = :p", p=pid) == 0
    for method in (client.post, client.delete):
        assert method(f"/api/posts/{posts['deleted']}/heart/", headers=auth(9)).status_code == 404
        assert method("/api/posts/99999999/heart/", headers=auth(9)).status_code == 404
    assert client.post("/api/posts/99999999999999999999/heart/",
                       headers=auth(9)).status_code == 404


@pytest.mark.parametrize("kind,column", [("praise", "praise_count"), ("trophy", "trophy_count")])
def test_praise_and_trophy_once_per_user(client, auth, state, posts, kind, column):
    pid = posts["ids"][1]
    assert client.post(f"/api/posts/{pid}/{kind}/", headers=auth(9)).get_json() == {
        "added": True}
    assert client.post(f"/api/posts/{pid}/{kind}/", headers=auth(9)).get_json() == {
        "added": False}
    assert client.post(f"/api/posts/{pid}/{kind}/", headers=auth(10)).get_json() == {
        "added": True}
    assert count(state, f"SELECT {column} FROM posts WHERE id = :p", p=pid) == 2
    assert client.post(f"/api/posts/{posts['deleted']}/{kind}/",
                       headers=auth(9)).status_code == 404
    assert client.delete(f"/api/posts/{pid}/{kind}/", headers=auth(9)).status_code == 405


def test_counts_exact_under_concurrency(app, auth, state, posts):
    """8 threads hearting, unhearting, praising and giving trophies to the same posts."""
    targets = posts["ids"][1:3]
    errors: list[object] = []

    def worker(user_id: int) -> None:
        client = app.test_client()
        h = auth(user_id)
        try:
            for i in range(6):
                for pid in targets:
                    client.post(f"/api/posts/{pid}/heart/", headers=h)
                    client.post(f"/api/posts/{pid}/praise/", headers=h)
                    client.post(f"/api/posts/{pid}/trophy/", headers=h)
                    if i % 2 and user_id % 2:
                        client.delete(f"/api/posts/{pid}/heart/", headers=h)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(100 + n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for pid in targets:
        for table, column in (("post_likes", "like_count"), ("post_praises", "praise_count"),
                              ("post_trophies", "trophy_count")):
            facts = count(state, f"SELECT count(*) FROM {table} WHERE post_id = :p", p=pid)
            assert count(state, f"SELECT {column} FROM posts WHERE id = :p", p=pid) == facts
        assert count(state, "SELECT praise_count FROM posts WHERE id = :p", p=pid) == 8
        assert count(state, "SELECT like_count FROM posts WHERE id = :p", p=pid) == 4


def test_fellows_are_mutual(client, auth, state):
    assert client.post("/api/fellows/5/", headers=auth(4)).get_json() == {"fellow": True}
    assert client.post("/api/fellows/5/", headers=auth(4)).get_json() == {"fellow": False}
    # Mutual: the other side's request finds the fellowship already there.
    assert client.post("/api/fellows/4/", headers=auth(5)).get_json() == {"fellow": False}
    rows = count(state, "SELECT count(*) FROM fellows WHERE (user_id, fellow_id) IN "
                        "((4, 5), (5, 4))")
    assert rows == 2
    assert client.delete("/api/fellows/4/", headers=auth(5)).get_json() == {"fellow": True}
    assert count(state, "SELECT count(*) FROM fellows") == 0
    assert client.delete("/api/fellows/5/", headers=auth(4)).get_json() == {"fellow": False}
    r = client.post("/api/fellows/4/", headers=auth(4))
    assert r.status_code == 400 and r.get_json()["code"] == "self_fellow"
    assert client.post("/api/fellows/0/", headers=auth(4)).status_code == 404


def test_collective_join_and_leave(client, auth, state, posts):
    coll = posts["collective"]
    answers = [client.post(f"/api/collectives/{coll}/join/", headers=auth(9)) for _ in range(2)]
    assert [r.get_json() for r in answers] == [{"member": True}, {"member": False}]
    assert count(state, "SELECT count(*) FROM collective_members WHERE user_id = 9") == 1
    r = client.get("/api/posts/?explain=true", headers=auth(9)).get_json()["results"]
    in_coll = next(p for p in r if p["collective_id"] == coll)
    assert in_coll["score_components"]["collective"] == 30
    answers = [client.delete(f"/api/collectives/{coll}/join/", headers=auth(9))
               for _ in range(2)]
    assert [r.get_json() for r in answers] == [{"member": True}, {"member": False}]
    assert count(state, "SELECT count(*) FROM collective_members WHERE user_id = 9") == 0
    assert client.post("/api/collectives/99999/join/", headers=auth(9)).status_code == 404
    assert client.delete("/api/collectives/99999/join/", headers=auth(9)).status_code == 404


def test_preferences(client, auth, posts):
    empty = {"preferred_post_types": [], "preferred_artist_types": [],
             "muted_collectives": [], "blocked_users": []}
    assert client.get("/api/user/preferences/", headers=auth(9)).get_json() == empty
    assert client.get("/api/user/preferences/").status_code == 401
    r = client.put("/api/user/preferences/", headers=auth(9),
                   json={"preferred_post_types": ["prayer", "post", "prayer"],
                         "blocked_users": [3]})
    assert r.status_code == 200
    assert r.get_json() == {"preferred_post_types": ["post", "prayer"],
                            "preferred_artist_types": [],
                            "muted_collectives": [], "blocked_users": [3]}
    r = client.put("/api/user/preferences/", headers=auth(9),
                   json={"muted_collectives": [posts["collective"]]})
    stored = {"preferred_post_types": ["post", "prayer"], "preferred_artist_types": [],
              "muted_collectives": [posts["collective"]], "blocked_users": [3]}
    assert r.get_json() == stored  # fields left out keep their value
    assert client.get("/api/user/preferences/", headers=auth(9)).get_json() == stored
    feed = client.get("/api/posts/", headers=auth(9)).get_json()
    assert feed["count"] == 3
    assert {p["author_id"] for p in feed["results"]}.isdisjoint({2, 3})  # muted, blocked
    chrono = client.get("/api/posts/?ordering=chronological", headers=auth(9)).get_json()
    assert chrono["count"] == 3 and {p["id"] for p in chrono["results"]} == {
        p["id"] for p in feed["results"]}
    for bad in ({"blocked_users": [9]}, {"blocked_users": [0]}, {"blocked_users": "3"},
                {"muted_collectives": [424242]}, {"preferred_post_types": [""]},
                {"preferred_post_types": ["x" * 51]}, {"colour": "red"},
                {"blocked_users": [2**63]}):
        r = client.put("/api/user/preferences/", headers=auth(9), json=bad)
        assert r.status_code == 400, bad
        assert r.get_json()["code"] == "validation_error" and r.get_json()["details"], bad
    r = client.put("/api/user/preferences/", headers=auth(9), data="{",
                   content_type="application/json")
    assert r.status_code == 400
