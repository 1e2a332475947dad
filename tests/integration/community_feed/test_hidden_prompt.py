"""A hidden prompt never leaves the service (API.md section 3): ``prompt`` is null whenever
``show_prompt`` is false, in every feed, in the creation response, and nowhere in Redis."""

from __future__ import annotations

import uuid

import pytest

from cache.client import connect

AUTHOR, FOLLOWER = 21, 22


@pytest.fixture
def prompts(client, auth):
    """Three posts by AUTHOR, whom FOLLOWER follows: one hidden prompt (a unique marker),
    one shown, one shown without a prompt. Returns {post id: expected prompt} and the
    marker."""
    hidden = f"secret-{uuid.uuid4().hex}"
    shown = f"public-{uuid.uuid4().hex}"
    bodies = [
        ({"title": "hidden", "show_prompt": False, "prompt": hidden}, None),
        ({"title": "default", "prompt": hidden}, None),  # show_prompt defaults to false
        ({"title": "shown", "show_prompt": True, "prompt": shown}, shown),
        ({"title": "shown, none", "show_prompt": True}, None),
    ]
    expected = {}
    for body, want in bodies:
        r = client.post("/community/posts", json=body, headers=auth(AUTHOR))
        assert r.status_code == 201
        created = r.get_json()
        assert created["prompt"] == want and created["show_prompt"] is body.get(
            "show_prompt", False)
        expected[created["id"]] = want
    r = client.post(f"/community/users/{AUTHOR}/follow", headers=auth(FOLLOWER))
    assert r.get_json() == {"following": True}
    return expected, hidden


def _community(client, headers, feed_type):
    r = client.get("/community/feed", query_string={"feed_type": feed_type},
                   headers=headers)
    assert r.status_code == 200
    return r.get_json()["posts"]


def _ranked(client, headers, **query):
    r = client.get("/api/posts/", query_string=query, headers=headers)
    assert r.status_code == 200
    return r.get_json()["results"]


def _assert_prompts(posts, expected, hidden):
    assert {p["id"]: p["prompt"] for p in posts} == expected
    assert hidden not in str(posts)


def test_community_feeds_never_show_a_hidden_prompt(client, auth, prompts):
    expected, hidden = prompts
    for headers in ({}, auth(AUTHOR), auth(FOLLOWER)):
        for feed_type in ("trending", "recent"):
            for _ in range(2):  # the first read fills the cache, the second reads it
                _assert_prompts(_community(client, headers, feed_type), expected, hidden)
    for _ in range(2):
        _assert_prompts(_community(client, auth(FOLLOWER), "following"), expected, hidden)


def test_personalized_feed_never_shows_a_hidden_prompt(client, auth, prompts):
    expected, hidden = prompts
    for viewer in (AUTHOR, FOLLOWER):
        for query in ({}, {"ordering": "personalized", "explain": "true"},
                      {"ordering": "chronological"}, {"invalidate_cache": "true"}):
            for _ in range(2):  # the second personalized read is a cached page
                _assert_prompts(_ranked(client, auth(viewer), **query), expected, hidden)
    _assert_prompts(_ranked(client, {}), expected, hidden)  # anonymous: chronological


def _redis_values(redis_url, prefix):
    """Every value stored under the test's key prefix, as one bytes blob per key."""
    client = connect(redis_url, 2.0, 2.0)
    try:
        for key in client.scan_iter(match=f"{prefix}*", count=1000):
            kind = client.type(key)
            kind = kind.decode() if isinstance(kind, bytes) else kind
            if kind == "string":
                parts = [client.get(key)]
            elif kind == "list":
                parts = client.lrange(key, 0, -1)
            elif kind == "hash":
                parts = [b for kv in client.hgetall(key).items() for b in kv]
            elif kind == "set":
                parts = list(client.smembers(key))
            elif kind == "zset":
                parts = [m for m, _ in client.zrange(key, 0, -1, withscores=True)]
            elif kind == "stream":
                parts = [repr(client.xrange(key)).encode()]
            else:
                parts = []
            yield key, b"".join(p if isinstance(p, bytes) else str(p).encode()
                                for p in parts if p is not None)
    finally:
        client.close()


def test_no_hidden_prompt_in_redis(client, auth, prompts, redis_url, key_prefix):
    expected, hidden = prompts
    for feed_type in ("trending", "recent"):
        _community(client, auth(FOLLOWER), feed_type)
    _community(client, auth(FOLLOWER), "following")
    _ranked(client, auth(FOLLOWER))
    _ranked(client, auth(FOLLOWER), ordering="chronological")
    stored = dict(_redis_values(redis_url, key_prefix))
    assert stored, "the reads above cached nothing: this check would prove nothing"
    leaks = [key for key, blob in stored.items() if hidden.encode() in blob]
    assert leaks == []
