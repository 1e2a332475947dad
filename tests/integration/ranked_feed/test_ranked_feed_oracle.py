"""The personalized order equals a plain computation of API.md's formula from the database
facts, on a generated world of a few hundred posts and users; and stays equal when Redis
is flushed or down between pages."""

from __future__ import annotations

import pytest

from service import ranked_feed
from tests.support.ranked_feed_data import FROZEN_NOW, generate, oracle_order, set_preferences


@pytest.fixture
def world(state, monkeypatch):
    monkeypatch.setattr(ranked_feed, "now", lambda: FROZEN_NOW)
    return generate(state)


def walk(client, headers, page_size: int = 50, between=None) -> list[dict]:
    """Every page of the viewer's personalized feed, in order."""
    results, page = [], 1
    while True:
        r = client.get(f"/api/posts/?page={page}&page_size={page_size}&explain=true",
                       headers=headers)
        assert r.status_code == 200, r.get_json()
        body = r.get_json()
        results += body["results"]
        if body["next"] is None:
            assert len(results) == body["count"]
            return results
        page += 1
        if between:
            between(page)


def assert_matches_oracle(state, viewer: int, results: list[dict]) -> None:
    expected = oracle_order(state, viewer)
    assert [p["id"] for p in results] == [pid for pid, _ in expected]
    for post, (_, score) in zip(results, expected, strict=True):
        assert post["score"] == pytest.approx(score, rel=1e-12, abs=1e-12)


def test_personalized_order_equals_oracle(client, auth, state, world):
    viewers = world.users[:6]
    set_preferences(state, viewers[0], types=["prayer"], muted=world.collectives[:2],
                    blocked=world.users[10:14])
    set_preferences(state, viewers[1], types=["question", "post"])
    for viewer in viewers:
        results = walk(client, auth(viewer))
        assert_matches_oracle(state, viewer, results)
        components = results[0]["score_components"]
        assert set(components) >= {"recency", "social", "interaction", "engagement",
                                   "collective", "post_type", "viewed", "viewed_factor"}
    # The blocked authors and muted collectives never appear.
    first = walk(client, auth(viewers[0]))
    assert not {p["author_id"] for p in first} & set(world.users[10:14])
    assert not {p["collective_id"] for p in first} & set(world.collectives[:2])


def test_oracle_with_other_weights(client, auth, state, world, app, monkeypatch):
    weights = {"recency": 0.5, "social": 0.1, "interaction": 0.05, "engagement": 0.2,
               "collective": 0.05, "post_type": 0.1}
    monkeypatch.setattr(state, "settings", state.settings.replace(ranking_weights=weights))
    viewer = world.users[7]
    expected = oracle_order(state, viewer, weights=weights)
    assert [p["id"] for p in walk(client, auth(viewer))] == [pid for pid, _ in expected]


def test_redis_flushed_between_pages(client, auth, state, world):
    viewer = world.users[2]

    def flush(_page: int) -> None:
        keys = list(state.cache.redis.scan_iter(match=state.cache.keys.pattern()))
        if keys:
            state.cache.redis.delete(*keys)

    assert_matches_oracle(state, viewer, walk(client, auth(viewer), between=flush))


def test_redis_down_between_pages(client, auth, state, world, monkeypatch):
    viewer = world.users[3]

    def toggle(page: int) -> None:  # down for even pages, back for odd ones
        monkeypatch.setattr(state.cache, "enabled", page % 2 == 1)

    assert_matches_oracle(state, viewer, walk(client, auth(viewer), between=toggle))
    monkeypatch.setattr(state.cache, "enabled", False)
    assert_matches_oracle(state, viewer, walk(client, auth(viewer)))


def test_redis_unreachable_app(settings, auth, state, world, monkeypatch):
    """A second app whose cache Redis is a dead port answers the same pages."""
    from service import create_app

    dead = create_app({"SETTINGS": settings.replace(redis_url="redis://127.0.0.1:1/0"),
                       "TESTING": True})
    try:
        viewer = world.users[4]
        assert_matches_oracle(state, viewer, walk(dead.test_client(), auth(viewer)))
    finally:
        dead.extensions["hc"].close()
