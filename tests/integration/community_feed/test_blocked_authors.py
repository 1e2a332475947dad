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
