"""A blocked author's posts never appear in any feed of the blocker (API.md section 4,
preferences; seed 003), in the community feeds as in the personalized one, cached pages
included; other viewers still see them."""

from __future__ import annotations

from tests.support.auth import bearer

BLOCKER, BLOCKED, OTHER = 31, 32, 33
FEEDS = ("/community/feed?feed_type=recent", "/community/feed?feed_type=trending",
         "/community/feed?feed_type=following", "/api/posts/?ordering=personalized",
         "/api/posts/?ordering=chronological")


def _ids(client, path, user):
    r = client.get(path, headers=bearer(user))
    assert r.status_code == 200, r.get_data(as_text=True)
    body = r.get_json()
    return {p["id"] for p in body.get("posts", body.get("results", []))}


def test_blocked_authors_vanish_from_every_feed_of_the_blocker(client):
    for user in (BLOCKER, OTHER):
        for author in (BLOCKED, OTHER):
            assert client.post(f"/community/users/{author}/follow",
                               headers=bearer(user)).status_code in (200, 400)
    theirs = client.post("/community/posts", headers=bearer(BLOCKED), json={"title": "b"})
    mine = client.post("/community/posts", headers=bearer(OTHER), json={"title": "o"})
    assert theirs.status_code == mine.status_code == 201
    blocked_post, other_post = theirs.get_json()["id"], mine.get_json()["id"]
    for path in FEEDS:  # before the block: seen, and the pages are now cached
        assert blocked_post in _ids(client, path, BLOCKER), path
    r = client.put("/api/user/preferences/", headers=bearer(BLOCKER),
                   json={"blocked_users": [BLOCKED]})
    assert r.status_code == 200, r.get_data(as_text=True)
    for path in FEEDS:
        seen = _ids(client, path, BLOCKER)
        assert blocked_post not in seen and other_post in seen, (path, seen)
        assert blocked_post in _ids(client, path, OTHER), path  # only the blocker's feeds
    r = client.put("/api/user/preferences/", headers=bearer(BLOCKER), json={"blocked_users": []})
    assert r.status_code == 200
    assert blocked_post in _ids(client, FEEDS[0], BLOCKER)  # unblocked: back at once


def _page(client, path, user, **query):
    r = client.get(path, headers=bearer(user), query_string=query)
    assert r.status_code == 200, r.get_data(as_text=True)
    return r.get_json()


def _walk(client, path, user, **query):
    """Every post id of a whole walk, and the total_count of its pages."""
    seen, counts, cursor = [], set(), None
    while True:
        body = _page(client, path, user, limit=2, **query, **({"cursor": cursor} if cursor
                                                               else {}))
        seen += [p["id"] for p in body["posts"]]
        counts.add(body["total_count"])
        if not body["has_more"]:
            return seen, counts
        cursor = body["next_cursor"]


def test_total_count_leaves_out_blocked_authors(client, settings):
    """``total_count`` agrees with what the blocker's walk lists, on every community feed,
    filtered or not, warm (the count of the blocked authors' posts rides in the page's
    count pipeline: no statement more) or with Redis down; other viewers count them."""
    from service import create_app
    from storage.db import DB_QUERIES

    for user in (BLOCKER, OTHER):
        for author in (BLOCKED, OTHER):
            client.post(f"/community/users/{author}/follow", headers=bearer(user))
    for author, n in ((BLOCKED, 3), (OTHER, 2)):
        for i in range(n):
            assert client.post("/community/posts", headers=bearer(author), json={
                "title": f"{author}-{i}", "tags": ["t"] if i % 2 == 0 else []}
            ).status_code == 201
    r = client.put("/api/user/preferences/", headers=bearer(BLOCKER),
                   json={"blocked_users": [BLOCKED]})
    assert r.status_code == 200, r.get_data(as_text=True)
    wanted = {(BLOCKER, ""): 2, (BLOCKER, "t"): 1, (OTHER, ""): 5, (OTHER, "t"): 3}
    # OTHER follows BLOCKED only (not themself): BLOCKED's posts.
    following = {**wanted, (OTHER, ""): 3, (OTHER, "t"): 2}

    def check(c):
        for feed in ("recent", "trending", "following"):
            for (user, tags), n in (following if feed == "following" else wanted).items():
                query = {"feed_type": feed, **({"tags": tags} if tags else {})}
                seen, counts = _walk(c, "/community/feed", user, **query)
                assert len(seen) == n and counts == {n}, (feed, user, tags, seen, counts)

    check(client)
    check(client)  # warm: the counts come from the cache
    before = DB_QUERIES._value.get()
    body = _page(client, "/community/feed", BLOCKER, feed_type="recent", limit=50)
    assert body["total_count"] == len(body["posts"]) == 2
    assert DB_QUERIES._value.get() - before == 0  # cached posts, as for anyone
    down = create_app({"SETTINGS": settings.replace(redis_url="redis://127.0.0.1:1/0"),
                       "TESTING": True})
    try:
        check(down.test_client())
    finally:
        down.extensions["hc"].close()
    # Unblocked: counted again at once (the cached blocked set was dropped with the change).
    r = client.put("/api/user/preferences/", headers=bearer(BLOCKER), json={"blocked_users": []})
    assert r.status_code == 200
    assert _page(client, "/community/feed", BLOCKER, feed_type="recent")["total_count"] == 5
    r = client.put("/api/user/preferences/", headers=bearer(BLOCKER),
                   json={"blocked_users": [BLOCKED]})
    assert _page(client, "/community/feed", BLOCKER, feed_type="recent")["total_count"] == 2
