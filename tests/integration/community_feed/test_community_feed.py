"""Community feed endpoints (API section 3): posts, likes, views, comments, follows, pages."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import text

from storage.models import User
from tests.support.auth import bearer
from tests.support.community_feed import make_post


def walk(client, headers=None, **params):
    seen, cursor, pages = [], None, 0
    while True:
        q = dict(params)
        if cursor:
            q["cursor"] = cursor
        r = client.get("/community/feed", query_string=q, headers=headers or {})
        assert r.status_code == 200, r.get_json()
        body = r.get_json()
        seen += [p["id"] for p in body["posts"]]
        pages += 1
        if not body["has_more"]:
            assert body["next_cursor"] is None
            return seen, body
        cursor = body["next_cursor"]
        assert pages < 100


def test_create_post_shape_and_author_fallback(client, auth, state):
    with state.db.session() as s:
        s.add(User(id=7, display_name="Seven"))
        s.commit()
    p = make_post(client, auth, 7, title="t", tags=["b", "a"], asset_type="image")
    assert p["author"] == {"id": 7, "display_name": "Seven", "avatar_url": None,
                           "subscription_tier": "free"}
    assert p["user_id"] == p["author_id"] == 7 and p["inspired_by_post_id"] is None
    assert p["is_featured"] is False and p["updated_at"].endswith("Z")
    assert p["tags"] == ["a", "b"] and p["like_count"] == 0
    assert p["is_liked_by_viewer"] is False and p["created_at"].endswith("Z")
    q = make_post(client, auth, 8)
    assert q["author"] == {"id": 8, "display_name": "Unknown", "avatar_url": None,
                           "subscription_tier": "free"}


def test_post_validation(client, auth):
    assert client.post("/community/posts", json={}, headers=auth(1)).status_code == 400
    assert client.post("/community/posts", json={"title": "x"}).status_code == 401
    r = client.post("/community/posts", json={"title": "x", "collective_id": 99},
                    headers=auth(1))
    assert r.status_code == 400 and r.get_json()["code"] == "validation_error"
    r = client.post("/community/posts", json={"title": "x", "tags": "nope"}, headers=auth(1))
    assert r.status_code == 400


def test_delete_author_or_admin(client, auth, admin_headers):
    p = make_post(client, auth, 2)
    assert client.delete(f"/community/posts/{p['id']}", headers=auth(3)).status_code == 403
    assert client.delete(f"/community/posts/{p['id']}", headers=auth(2)).status_code == 204
    assert client.delete(f"/community/posts/{p['id']}", headers=auth(2)).status_code == 404
    q = make_post(client, auth, 2)
    assert client.delete(f"/community/posts/{q['id']}", headers=admin_headers).status_code == 204
    for feed_type in ("recent", "trending"):
        ids, body = walk(client, feed_type=feed_type)
        assert ids == [] and body["total_count"] == 0


def test_like_unlike_answer_whether_this_call_changed_anything(client, auth):
    p = make_post(client, auth, 1)
    url = f"/community/posts/{p['id']}"
    # Unliking a post never liked changes nothing.
    assert client.delete(url + "/like", headers=auth(2)).get_json() == {"unliked": False}
    answers = [client.post(url + "/like", headers=auth(2)).get_json() for _ in range(2)]
    assert answers == [{"liked": True}, {"liked": False}]
    e = client.get(url + "/engagement", headers=auth(2)).get_json()
    assert e == {"like_count": 1, "comment_count": 0, "view_count": 0, "is_liked": True}
    assert client.get(url + "/engagement").get_json()["is_liked"] is False
    answers = [client.delete(url + "/like", headers=auth(2)).get_json() for _ in range(2)]
    assert answers == [{"unliked": True}, {"unliked": False}]
    assert client.get(url + "/engagement").get_json()["like_count"] == 0
    assert client.post("/community/posts/999999/like", headers=auth(2)).status_code == 404
    assert client.post(url + "/like").status_code == 401


def _race(app, calls: list[tuple[int, str, str]], per_thread: int) -> dict[int, list]:
    """Run each (user, method, url) call ``per_thread`` times in its own thread, all
    threads released at once; returns each user's (status, body) answers."""
    answers: dict[int, list] = {user: [] for user, _, _ in calls}
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(calls))
    lock = threading.Lock()

    def worker(user: int, method: str, url: str) -> None:
        client = app.test_client()
        try:
            barrier.wait()
            for _ in range(per_thread):
                r = client.open(url, method=method, headers=bearer(user))
                with lock:
                    answers[user].append((r.status_code, r.get_json()))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=call) for call in calls]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    return answers


def test_concurrent_likes_exactly_one_true_per_user_and_exact_count(app, client, auth, state):
    post_id = make_post(client, auth, 1)["id"]
    url = f"/community/posts/{post_id}/like"
    users = range(100, 108)

    def like_count() -> int:
        with state.db.session() as s:
            counter = s.execute(text("SELECT like_count FROM posts WHERE id = :p"),
                                {"p": post_id}).scalar_one()
            rows = s.execute(text("SELECT count(*) FROM post_likes WHERE post_id = :p"),
                             {"p": post_id}).scalar_one()
        assert counter == rows
        return counter

    # 8 threads, each its own user, each liking the post twice.
    answers = _race(app, [(u, "POST", url) for u in users], per_thread=2)
    for user in users:
        assert sorted(answers[user], key=str) == [(200, {"liked": False}),
                                                  (200, {"liked": True})], user
    assert like_count() == 8
    engagement = client.get(f"/community/posts/{post_id}/engagement").get_json()
    assert engagement["like_count"] == 8
    # Each user's two unlikes sent at the same moment from two threads: one removes it.
    answers = _race(app, [(u, "DELETE", url) for u in users[:4] for _ in range(2)],
                    per_thread=1)
    for user in users[:4]:
        assert sorted(answers[user], key=str) == [(200, {"unliked": False}),
                                                  (200, {"unliked": True})], user
    assert like_count() == 4


def test_views_debounced_and_comments(client, auth, state):
    p = make_post(client, auth, 1)
    url = f"/community/posts/{p['id']}"
    for _ in range(3):
        assert client.post(url + "/view", headers=auth(2)).status_code == 204
    assert client.post(url + "/view", headers=auth(3)).status_code == 204
    assert client.get(url + "/engagement").get_json()["view_count"] == 2
    with state.db.session() as s:  # 31 minutes later, viewer 2 counts again
        s.execute(__import__("sqlalchemy").text(
            "UPDATE post_views SET counted_at = counted_at - interval '31 minutes' "
            "WHERE viewer_id = 2"))
        s.commit()
    client.post(url + "/view", headers=auth(2))
    assert client.get(url + "/engagement").get_json()["view_count"] == 3
    r = client.post(url + "/comments", json={"body": "nice"}, headers=auth(4))
    assert r.status_code == 201 and r.get_json()["body"] == "nice"
    assert client.post(url + "/comments", json={"body": ""}, headers=auth(4)).status_code == 400
    assert client.get(url + "/engagement").get_json()["comment_count"] == 1


def test_follow_and_following_feed(client, auth):
    assert client.post("/community/users/5/follow", headers=auth(5)).status_code == 400
    assert client.get("/community/feed?feed_type=following").status_code == 401
    a = [make_post(client, auth, 10)["id"] for _ in range(3)]
    make_post(client, auth, 11)
    c = [make_post(client, auth, 12)["id"] for _ in range(2)]
    ids, body = walk(client, auth(1), feed_type="following", limit=2)
    assert ids == [] and body["total_count"] == 0
    for u in (10, 12):
        r = client.post(f"/community/users/{u}/follow", headers=auth(1))
        assert r.get_json() == {"following": True}
    again = client.post("/community/users/10/follow", headers=auth(1))
    assert again.status_code == 200 and again.get_json() == {"following": False}
    ids, body = walk(client, auth(1), feed_type="following", limit=2)
    assert ids == sorted(a + c, reverse=True) and body["total_count"] == 5
    answers = [client.delete("/community/users/12/follow", headers=auth(1)).get_json()
               for _ in range(2)]
    assert answers == [{"following": True}, {"following": False}]
    ids, _ = walk(client, auth(1), feed_type="following", limit=2)
    assert ids == sorted(a, reverse=True)
    new = make_post(client, auth, 10)["id"]
    ids, _ = walk(client, auth(1), feed_type="following", limit=2)
    assert ids == sorted([*a, new], reverse=True)


def test_recent_filters_and_total(client, auth):
    made = []
    for i in range(12):
        made.append(make_post(client, auth, 1 + i % 3, tags=["x", "y"][: 1 + i % 2],
                              asset_type="image" if i % 3 == 0 else None)["id"])
    ids, body = walk(client, feed_type="recent", limit=5)
    assert ids == sorted(made, reverse=True) and body["total_count"] == 12
    ids, body = walk(client, feed_type="recent", limit=2, tags="y,x")
    assert ids == sorted(made[1::2], reverse=True) and body["total_count"] == 6
    ids, body = walk(client, feed_type="recent", limit=2, asset_type="image")
    assert ids == sorted(made[::3], reverse=True) and body["total_count"] == 4


def test_trending_order(client, auth):
    ps = [make_post(client, auth, 1)["id"] for _ in range(4)]
    for u in range(2, 5):
        client.post(f"/community/posts/{ps[1]}/like", headers=auth(u))
    client.post(f"/community/posts/{ps[2]}/comments", json={"body": "x"}, headers=auth(2))
    ids, body = walk(client, feed_type="trending", limit=3)
    assert ids[:2] == [ps[1], ps[2]] and sorted(ids) == sorted(ps)
    assert body["total_count"] == 4


@pytest.mark.parametrize("cursor", ["!!", "abc", "eyJ2IjoxfQ"])
def test_bad_cursor_and_args(client, cursor):
    r = client.get("/community/feed", query_string={"cursor": cursor, "feed_type": "recent"})
    assert r.status_code == 400 and r.get_json()["code"] == "invalid_cursor"
    assert client.get("/community/feed?limit=0").status_code == 400
    assert client.get("/community/feed?feed_type=nope").status_code == 400


def test_trending_rebuild_job_registered_and_rebuilds(client, auth, state):
    from cache import community_feed as cf
    from jobs.scheduler import default_jobs

    job = next(j for j in default_jobs(state) if j.name == "community-trending")
    assert job.interval == state.settings.trending_recompute_interval
    ps = [make_post(client, auth, 1)["id"] for _ in range(3)]
    job.run(state)
    ck = cf.CommunityKeys(state.cache.keys)
    members = state.cache.redis.zrevrange(ck.trending, 0, -1)
    assert [int(m) for m in members] == sorted(ps, reverse=True)
    client.post(f"/community/posts/{ps[0]}/like", headers=auth(9))  # live re-score
    assert int(state.cache.redis.zrevrange(ck.trending, 0, 0)[0]) == ps[0]


def test_following_walk_past_a_trimmed_author_set(settings):
    """An author with more posts than AUTHOR_CACHE_SIZE: the cached set is trimmed, loses
    its "complete" mark, and the walk continues in Postgres: no post is missed."""
    from service import create_app
    from tests.support.auth import bearer

    app = create_app({"SETTINGS": settings.replace(author_cache_size=3), "TESTING": True})
    client = app.test_client()
    try:
        ids, _ = walk(client, bearer(1), feed_type="following", limit=2)  # fills, empty
        assert client.post("/community/users/10/follow", headers=bearer(1)).status_code == 200
        walk(client, bearer(1), feed_type="following", limit=2)  # author set cached
        posts = [make_post(client, bearer, 10)["id"] for _ in range(7)]  # trimmed via ops
        ids, body = walk(client, bearer(1), feed_type="following", limit=2)
        assert ids == sorted(posts, reverse=True)
        assert body["total_count"] == 7
    finally:
        app.extensions["hc"].close()


def test_following_walk_past_first_page_stays_in_redis(client, auth):
    """The merged author sets are read after a cursor key for every followee (a Lua
    slip once made that fail for the second followee on, sending pages to Postgres)."""
    from cache import stats

    def events(outcome):
        return sum(s.value for m in stats.CACHE_EVENTS.collect() for s in m.samples
                   if s.name.endswith("_total") and s.labels["outcome"] == outcome
                   and s.labels["path"].startswith("community_feed"))

    ids = [make_post(client, auth, 10 + i % 3)["id"] for i in range(9)]
    for u in (10, 11, 12):
        client.post(f"/community/users/{u}/follow", headers=auth(1))
    walk(client, auth(1), feed_type="following", limit=2)  # fills the author sets
    errors, fallbacks = events("error"), events("fallback")
    seen, body = walk(client, auth(1), feed_type="following", limit=2)
    assert seen == sorted(ids, reverse=True) and body["total_count"] == 9
    assert (events("error"), events("fallback")) == (errors, fallbacks)
