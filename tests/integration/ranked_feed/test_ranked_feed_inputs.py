"""Issue 19: the score's inputs are kept by the writes that change them (``posts.engagement``
and ``user_post_preferences``, migration 0008), the cached ranking is bounded (the first
RANKED_CACHE_ENTRIES entries, extended on demand) and a personalized walk is honest about
its bound: every candidate once, ``next: null`` on its last page, never a 404."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from cache import ranked_feed as rf
from service import ranked_feed
from storage import ranked_feed as store
from tests.support.ranked_feed_data import FROZEN_NOW, generate, oracle_order

FACT_STATS = (
    "SELECT p.author_id, p.post_type, count(*) FROM ("
    " SELECT post_id FROM post_likes WHERE user_id = :u"
    " UNION ALL SELECT post_id FROM post_praises WHERE user_id = :u"
    " UNION ALL SELECT post_id FROM post_trophies WHERE user_id = :u"
    ") f JOIN posts p ON p.id = f.post_id GROUP BY 1, 2"
)
KEPT_STATS = ("SELECT author_id, post_type, hearts + praises + trophies FROM "
              "user_post_preferences WHERE user_id = :u AND hearts + praises + trophies > 0")
ENGAGEMENT = ("SELECT id FROM posts WHERE engagement IS DISTINCT FROM least(like_count + "
              "2 * praise_count + 5 * trophy_count + 0.5 * comment_count, 50)")


def rows(state, sql: str, **params) -> set[tuple]:
    with state.db.session() as s:
        return {tuple(r) for r in s.execute(text(sql), params)}


@pytest.fixture
def world(state, monkeypatch):
    monkeypatch.setattr(ranked_feed, "now", lambda: FROZEN_NOW)
    return generate(state, n_users=20, n_posts=400, n_collectives=4, seed=5)


def test_kept_inputs_equal_the_facts_after_api_writes(client, auth, state, world):
    viewer = world.users[0]
    for user in world.users[:5]:
        assert rows(state, KEPT_STATS, u=user) == rows(state, FACT_STATS, u=user)
    assert not rows(state, ENGAGEMENT)
    public = sorted(r[0] for r in rows(
        state, "SELECT id FROM posts WHERE collective_id IS NULL AND deleted_at IS NULL"))
    liked = {r[0] for r in rows(state, "SELECT post_id FROM post_likes WHERE user_id = :u",
                                u=viewer)}
    fresh = [p for p in public if p not in liked][:3]
    for post in fresh:
        assert client.post(f"/api/posts/{post}/heart/", headers=auth(viewer)).status_code == 200
        assert client.post(f"/api/posts/{post}/praise/",
                           headers=auth(viewer)).status_code == 200
    assert client.post(f"/api/posts/{fresh[0]}/trophy/", headers=auth(viewer)).status_code == 200
    assert client.delete(f"/api/posts/{fresh[1]}/heart/",
                         headers=auth(viewer)).status_code == 200
    # The community like endpoint writes the same fact.
    assert client.post(f"/community/posts/{fresh[1]}/like",
                       headers=auth(viewer)).status_code in (200, 201)
    assert rows(state, KEPT_STATS, u=viewer) == rows(state, FACT_STATS, u=viewer)
    assert not rows(state, ENGAGEMENT)


def test_one_statement_loads_what_the_single_loaders_load(state, world):
    """``load_inputs`` (every input in one round trip) equals the four loaders, for
    viewers with and without preferences, fellows, collectives and interactions."""
    with state.db.session() as s:
        s.execute(text("INSERT INTO user_preferences (user_id, preferred_post_types, "
                       "muted_collectives, blocked_users) VALUES (:u, '{prayer}', :m, :b)"),
                  {"u": world.users[1], "m": world.collectives[:1], "b": world.users[5:7]})
        s.execute(text("DELETE FROM fellows WHERE user_id = :u OR fellow_id = :u"),
                  {"u": world.users[2]})
        s.commit()
        checked = 0
        for user in [*world.users[:6], 10**9]:
            got = store.load_inputs(s, user)
            assert got.fellows == store.load_fellows(s, user)
            assert got.collectives == store.load_collectives(s, user)
            assert (got.by_author, got.by_type) == store.load_interaction_stats(s, user)
            assert got.preferences == store.load_preferences(s, user)
            checked += bool(got.by_author) and bool(got.collectives)
        assert checked  # the world gives some viewer interactions and collectives
        assert store.load_inputs(s, world.users[1]).preferences.blocked_users == sorted(
            world.users[5:7])
        assert store.load_inputs(s, world.users[2]).fellows == []


def walk(client, headers, page_size: int) -> tuple[list[dict], list[dict]]:
    """Every page until ``next`` is null: (posts, page bodies)."""
    results, bodies, page = [], [], 1
    while True:
        r = client.get(f"/api/posts/?page={page}&page_size={page_size}&explain=true",
                       headers=headers)
        assert r.status_code == 200, r.get_json()
        bodies.append(r.get_json())
        results += bodies[-1]["results"]
        if bodies[-1]["next"] is None:
            return results, bodies
        page += 1


def test_cached_ranking_is_bounded_and_extended_on_demand(client, auth, state, world):
    viewer = world.users[1]
    keep = state.settings.ranked_cache_entries
    expected = oracle_order(state, viewer)
    assert len(expected) > keep  # the walk goes past the kept entries
    first = client.get("/api/posts/?page_size=20", headers=auth(viewer)).get_json()
    version = state.filler.version(rf.PATH, rf.scope(viewer))
    key = rf.rank_key(state.cache.keys, viewer)
    assert state.cache.redis.memory_usage(key, samples=0) <= 8 * 1024
    head, _ = rf.decode(state.cache.redis.get(key))
    count, kept = head.count, head.kept
    assert (count, kept) == (len(expected), keep) and first["count"] == count
    assert (head.version, head.config_version) == (version, 0)  # ranked under them
    results, bodies = walk(client, auth(viewer), 30)
    assert [p["id"] for p in results] == [pid for pid, _ in expected]
    assert {b["count"] for b in bodies} == {len(expected)}
    (_, kept, *_), _ = rf.decode(state.cache.redis.get(key))
    assert kept == len(expected)  # extended as the walk went
    weights = state.settings.ranking_weights
    for post in results:  # explain still adds up to the score
        parts = post["score_components"]
        total = sum(weights[k] * parts[k] for k in (
            "recency", "social", "interaction", "engagement", "collective", "post_type"))
        assert post["score"] == pytest.approx(total * parts["viewed_factor"], rel=1e-12)
    past = client.get(f"/api/posts/?page={len(bodies) + 1}&page_size=30",
                      headers=auth(viewer))
    assert past.status_code == 200 and past.get_json()["results"] == []
    assert past.get_json()["next"] is None


def test_walk_survives_a_shorter_ranking_mid_walk(client, auth, state, world):
    """The ranking expires between pages and the new one is shorter (posts deleted): the
    walk still ends with ``next: null`` and no 404."""
    viewer = world.users[2]
    first = client.get("/api/posts/?page_size=50", headers=auth(viewer)).get_json()
    assert first["next"] is not None
    with state.db.session() as s:
        s.execute(text("UPDATE posts SET deleted_at = now() WHERE id IN (SELECT id FROM "
                       "posts WHERE deleted_at IS NULL ORDER BY created_at DESC LIMIT 120)"))
        s.commit()
    keys = list(state.cache.redis.scan_iter(match=state.cache.keys.pattern()))
    state.cache.redis.delete(*keys)
    page, seen = 2, []
    while True:
        r = client.get(f"/api/posts/?page={page}&page_size=50", headers=auth(viewer))
        assert r.status_code == 200
        body = r.get_json()
        seen += [p["id"] for p in body["results"]]
        if body["next"] is None:
            break
        page += 1
    assert len(seen) == len(set(seen))
