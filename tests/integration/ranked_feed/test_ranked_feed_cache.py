"""Invalidation of the personalized feed's cache: every kind of change by a viewer shows in
their next page (no stale page), while an unchanged viewer keeps hitting the page cache;
deleted posts, blocked authors and muted collectives never come out of a cached page; a
lost version copy is reloaded from Postgres, never restarted."""

from __future__ import annotations

import orjson
from prometheus_client import REGISTRY
from sqlalchemy import text

from cache import ranked_feed as rf
from cache.client import CacheUnavailable
from cache.keys import Scope
from cache.outbox import relay_outbox
from service import ranked_feed, ranked_feed_ops
from storage import ranked_feed as store
from tests.support.ranked_feed_data import FROZEN_NOW, generate, oracle_order

CANDIDATE_SQL = 1  # the candidates' query (ranked_candidates, its settings its own)


def counter(outcome: str, path: str = rf.PATH) -> float:
    return REGISTRY.get_sample_value(
        "cache_events_total", {"path": path, "outcome": outcome}) or 0.0


def page(client, headers, **params) -> list[tuple[int, float]]:
    query = "&".join(f"{k}={v}" for k, v in {"page_size": 50, **params}.items())
    r = client.get(f"/api/posts/?{query}", headers=headers)
    assert r.status_code == 200, r.get_json()
    return [(p["id"], p["score"]) for p in r.get_json()["results"]]


def expected_first_page(state, viewer: int) -> list[int]:
    return [pid for pid, _ in oracle_order(state, viewer)[:50]]


def _world(state, monkeypatch):
    monkeypatch.setattr(ranked_feed, "now", lambda: FROZEN_NOW)
    return generate(state, n_users=30, n_posts=150, n_collectives=5, seed=11)


def test_each_change_shows_next_page_and_bystander_keeps_hitting(
        client, auth, state, monkeypatch):
    world = _world(state, monkeypatch)
    viewer, bystander = world.users[0], world.users[-1]
    with state.db.session() as s:  # the bystander shares nothing with the changes below
        s.execute(text("DELETE FROM fellows WHERE user_id = :b OR fellow_id = :b"),
                  {"b": bystander})
        s.commit()
        # Target: a post on the viewer's first page, in a collective, by someone else.
        first_ids = [pid for pid, _ in oracle_order(state, viewer)[:50]]
        rows = s.execute(text(
            "SELECT id, author_id, collective_id FROM posts WHERE id = ANY(:ids)"),
            {"ids": first_ids}).all()
        by_id = {r.id: r for r in rows}
        target = next(by_id[i] for i in first_ids if by_id[i].collective_id is not None
                      and by_id[i].author_id not in (viewer, bystander))
        other = next(by_id[i].author_id for i in first_ids
                     if by_id[i].author_id not in (viewer, bystander, target.author_id)
                     and by_id[i].collective_id != target.collective_id)
        # Start from "no relation" so every change below really changes something.
        for table in ("post_likes", "post_praises", "post_trophies"):
            s.execute(text(f"DELETE FROM {table} WHERE user_id = :v AND post_id = :p"),
                      {"v": viewer, "p": target.id})
        s.execute(text("DELETE FROM fellows WHERE (user_id = :v AND fellow_id = :a) "
                       "OR (user_id = :a AND fellow_id = :v)"),
                  {"v": viewer, "a": target.author_id})
        s.execute(text("UPDATE posts p SET "
                       "like_count = (SELECT count(*) FROM post_likes x WHERE x.post_id = p.id),"
                       "praise_count = (SELECT count(*) FROM post_praises x "
                       "WHERE x.post_id = p.id),"
                       "trophy_count = (SELECT count(*) FROM post_trophies x "
                       "WHERE x.post_id = p.id)"))
        s.commit()
        # A post type outside the viewer's top 3: preferring it changes scores.
        used = dict(s.execute(text(
            "SELECT p.post_type, count(*) FROM (SELECT post_id FROM post_likes WHERE "
            "user_id = :v UNION ALL SELECT post_id FROM post_praises WHERE user_id = :v "
            "UNION ALL SELECT post_id FROM post_trophies WHERE user_id = :v) f "
            "JOIN posts p ON p.id = f.post_id GROUP BY 1"), {"v": viewer}).all())
    top3 = sorted(used, key=lambda t: (-used[t], t))[:3]
    least = next(t for t in ("post", "prayer", "testimony", "question") if t not in top3)
    fellow_of_target = target.author_id
    h = auth(viewer)
    changes = [
        ("heart", lambda: client.post(f"/api/posts/{target.id}/heart/", headers=h)),
        ("unheart", lambda: client.delete(f"/api/posts/{target.id}/heart/", headers=h)),
        # A community like is the same fact as a heart: it must refresh the page too.
        ("like", lambda: client.post(f"/community/posts/{target.id}/like", headers=h)),
        ("unlike", lambda: client.delete(f"/community/posts/{target.id}/like", headers=h)),
        ("praise", lambda: client.post(f"/api/posts/{target.id}/praise/", headers=h)),
        ("trophy", lambda: client.post(f"/api/posts/{target.id}/trophy/", headers=h)),
        ("fellow", lambda: client.post(f"/api/fellows/{fellow_of_target}/", headers=h)),
        ("unfellow", lambda: client.delete(f"/api/fellows/{fellow_of_target}/", headers=h)),
        # The viewer is in the target's collective (they see the target): leave, rejoin.
        ("leave", lambda: client.delete(
            f"/api/collectives/{target.collective_id}/join/", headers=h)),
        ("join", lambda: client.post(
            f"/api/collectives/{target.collective_id}/join/", headers=h)),
        ("prefer", lambda: client.put("/api/user/preferences/", headers=h,
                                      json={"preferred_post_types": [least]})),
        ("mute", lambda: client.put("/api/user/preferences/", headers=h,
                                    json={"muted_collectives": [target.collective_id]})),
        ("block", lambda: client.put("/api/user/preferences/", headers=h,
                                     json={"blocked_users": [other]})),
    ]
    bystander_first = page(client, auth(bystander))
    for name, change in changes:
        before = page(client, h)
        hits = counter("hit")
        assert page(client, h) == before, name  # unchanged: served from the page cache
        assert counter("hit") == hits + 1, name
        r = change()
        assert r.status_code == 200, (name, r.get_json())
        misses = counter("miss")
        after = page(client, h)
        assert counter("miss") == misses + 1, name  # a new version: recomputed
        assert [pid for pid, _ in after] == expected_first_page(state, viewer), name
        assert after != before, name
        hits = counter("hit")
        assert page(client, auth(bystander)) == bystander_first, name
        assert counter("hit") == hits + 1, name  # the bystander's page stays cached


def test_fellow_change_refreshes_both_sides(client, auth, state, monkeypatch):
    world = _world(state, monkeypatch)
    a, b = world.users[3], world.users[4]
    client.delete(f"/api/fellows/{b}/", headers=auth(a))
    page(client, auth(a)), page(client, auth(b))
    assert client.post(f"/api/fellows/{b}/", headers=auth(a)).get_json() == {"fellow": True}
    for user in (a, b):
        misses = counter("miss")
        assert [pid for pid, _ in page(client, auth(user))] == expected_first_page(state, user)
        assert counter("miss") == misses + 1


def test_deleted_blocked_muted_never_come_from_a_cached_page(client, auth, admin_headers,
                                                             state, monkeypatch):
    """A delete drops the post's entity: the cached ranking (a hit, no SQL) leaves it out.
    Blocks and mutes move the viewer's calc version in their transaction: once their
    change is applied (after commit, or by the outbox relay when that apply was lost) the
    page is ranked again without them."""
    world = _world(state, monkeypatch)
    viewer = world.users[1]
    cached = page(client, auth(viewer))
    deleted, blocked_post, muted_post = (pid for pid, _ in cached[:3])
    assert client.delete(f"/community/posts/{deleted}",
                         headers=admin_headers).status_code == 204
    hits = counter("hit")
    served = page(client, auth(viewer))
    assert counter("hit") == hits + 1
    assert deleted not in {pid for pid, _ in served}
    assert [pid for pid, _ in served] == [pid for pid, _ in cached if pid != deleted][
        :len(served)]
    with state.db.session() as s:
        blocked_author, = s.execute(text("SELECT author_id FROM posts WHERE id = :p"),
                                    {"p": blocked_post}).one()
        s.execute(text("UPDATE posts SET collective_id = :c WHERE id = :p"),
                  {"c": world.collectives[0], "p": muted_post})
        s.commit()

    def lost(changes):
        raise CacheUnavailable("test")

    with monkeypatch.context() as m:  # committed, its apply lost: the relay applies it
        m.setattr(state.applier, "apply", lost)
        ranked_feed_ops.save_preferences(state, viewer, {
            "muted_collectives": [world.collectives[0]], "blocked_users": [blocked_author]})
    relay_outbox(state.db, state.applier, min_age=0)
    misses = counter("miss")
    served = page(client, auth(viewer))
    assert counter("miss") == misses + 1
    ids = {pid for pid, _ in served}
    assert deleted not in ids and blocked_post not in ids and muted_post not in ids
    with state.db.session() as s:
        rows = s.execute(text(
            "SELECT author_id, collective_id FROM posts WHERE id = ANY(:ids)"),
            {"ids": list(ids)}).all()
    assert all(a != blocked_author and c != world.collectives[0] for a, c in rows)


def test_invalidate_cache_forces_a_fresh_page(client, auth, state, monkeypatch):
    world = _world(state, monkeypatch)
    viewer = world.users[2]
    first = page(client, auth(viewer))
    with state.db.session() as s:  # someone else's new post: not a change of the viewer's
        new_id = s.execute(text(
            "INSERT INTO posts (author_id, title, created_at) VALUES (:a, 'fresh', :t) "
            "RETURNING id"), {"a": world.users[5], "t": FROZEN_NOW}).scalar_one()
        s.commit()
    assert page(client, auth(viewer)) == first  # cached for up to PAGE_CACHE_TTL
    fresh = page(client, auth(viewer), invalidate_cache="true")
    assert new_id in {pid for pid, _ in fresh}
    assert [pid for pid, _ in fresh] == expected_first_page(state, viewer)
    hits = counter("hit")
    assert page(client, auth(viewer)) == fresh  # the forced page replaced the cached one
    assert counter("hit") == hits + 1


def test_forced_page_costs(client, auth, state, monkeypatch):
    """``invalidate_cache=true``: the versions with the fill's lease and the viewer's
    cached inputs, then the publish with the page's post entities (2 Redis round trips);
    the candidates (one pipeline of the ranking's settings and the query), no SQL for the
    page's posts."""
    from tests.support.metrics import Costs

    world = _world(state, monkeypatch)
    viewer = world.users[5]
    page(client, auth(viewer))  # caches the inputs and the version copy
    costs = Costs(monkeypatch)
    fresh, sql, trips = costs.of(lambda: page(client, auth(viewer), invalidate_cache="true"))
    assert [pid for pid, _ in fresh] == expected_first_page(state, viewer)
    assert trips == 2
    assert sql == CANDIDATE_SQL
    # Inputs expired: loaded in the same session (one statement more), written in the
    # publish's round trip, and read from the cache by the next forced page.
    version = state.filler.version(rf.PATH, rf.scope(viewer))
    state.cache.redis.delete(rf.inputs_key(state.cache.keys, viewer))
    again, sql, trips = costs.of(lambda: page(client, auth(viewer), invalidate_cache="true"))
    assert again == fresh and trips == 2
    assert sql == CANDIDATE_SQL + 1
    hits = counter("hit", rf.INPUTS_PATH)
    assert page(client, auth(viewer), invalidate_cache="true") == fresh
    assert counter("hit", rf.INPUTS_PATH) == hits + 1
    # Inputs of another version are not read: loaded again, and written under this one.
    key = rf.inputs_key(state.cache.keys, viewer)
    stale = orjson.loads(state.cache.redis.get(key))
    state.cache.redis.set(key, orjson.dumps({**stale, "v": version - 1, "fellows": []}))
    again, sql, trips = costs.of(lambda: page(client, auth(viewer), invalidate_cache="true"))
    assert again == fresh and sql == CANDIDATE_SQL + 1
    assert orjson.loads(state.cache.redis.get(key)) == stale
    # The version copy lost: its row read on the page's session, the copy set back.
    state.cache.redis.delete(state.cache.keys.version(rf.scope(viewer)))
    again, sql, trips = costs.of(lambda: page(client, auth(viewer), invalidate_cache="true"))
    assert again == fresh and trips == 3
    assert sql == CANDIDATE_SQL + 1
    assert state.filler.version(rf.PATH, rf.scope(viewer)) == version


def test_forced_page_with_its_posts_missing_uses_one_connection(
        client, auth, state, monkeypatch):
    """A forced page whose post entities (and their version copies) are gone: the ranking,
    the lost copies' rows and the posts' rows are read on one pooled connection (one
    checkout), the posts come back filled, and the next cached page needs no SQL."""
    from sqlalchemy import event

    from cache import posts as cache_posts
    from tests.support.metrics import Costs

    world = _world(state, monkeypatch)
    viewer = world.users[6]
    fresh = page(client, auth(viewer))
    for pid, _ in fresh:
        state.cache.redis.delete(cache_posts.key(state.cache.keys, pid),
                                 state.cache.keys.version(cache_posts.scope(pid)))
    checkouts = []
    listener = lambda *args: checkouts.append(1)  # noqa: E731
    event.listen(state.db.engine, "checkout", listener)
    try:
        costs = Costs(monkeypatch)
        again, sql, _ = costs.of(lambda: page(client, auth(viewer), invalidate_cache="true"))
    finally:
        event.remove(state.db.engine, "checkout", listener)
    assert again == fresh
    assert len(checkouts) == 1
    assert sql == CANDIDATE_SQL + 2  # the lost version rows, the posts' rows
    cached, sql, _ = costs.of(lambda: page(client, auth(viewer)))
    assert cached == fresh and sql == 0


def test_candidates_query_runs_under_the_rankings_settings(state, monkeypatch):
    """The ranking's planner settings belong to its function (in force while it runs),
    and only there: the read session's next statement has the server's defaults."""
    world = _world(state, monkeypatch)
    names = ("max_parallel_workers_per_gather", "random_page_cost", "plan_cache_mode")
    with state.db.read() as session:
        config = session.execute(text(
            "SELECT proconfig FROM pg_proc WHERE proname = 'ranked_candidates'")).scalar_one()
        assert sorted(config) == ["max_parallel_workers_per_gather=0",
                                  "plan_cache_mode=force_generic_plan",
                                  "random_page_cost=1.1"]
        default = [session.execute(text(f"SHOW {name}")).scalar_one() for name in names]
        assert len(store.load_candidates(
            session, viewer=world.users[0], fellows=[], collectives=[], blocked=[],
            muted=[], type_values={}, k_recent=5, k_social=5)) == 5
        assert [session.execute(text(f"SHOW {name}")).scalar_one()
                for name in names] == default
    assert default[1] != "1.1"  # else the test would not tell


def test_lost_version_copy_is_reloaded_not_restarted(client, auth, state, monkeypatch):
    world = _world(state, monkeypatch)
    viewer = world.users[6]
    stale = page(client, auth(viewer))
    with state.db.session() as s:
        target = s.execute(text(
            "SELECT id FROM posts WHERE deleted_at IS NULL AND author_id <> :v "
            "AND (collective_id IS NULL OR collective_id IN (SELECT collective_id FROM "
            "collective_members WHERE user_id = :v)) "
            "ORDER BY created_at LIMIT 1"), {"v": viewer}).scalar_one()
    assert client.post(f"/api/posts/{target}/trophy/", headers=auth(viewer)).status_code == 200
    # Redis loses the version copy (e.g. eviction or restart) but an old page survives.
    state.cache.redis.delete(state.cache.keys.version(rf.scope(viewer)))
    after = page(client, auth(viewer))
    assert after != stale
    assert [pid for pid, _ in after] == expected_first_page(state, viewer)


def test_inputs_are_cached_across_page_expiry(client, auth, state, monkeypatch):
    world = _world(state, monkeypatch)
    viewer = world.users[7]
    first = page(client, auth(viewer))
    version = state.filler.version(rf.PATH, rf.scope(viewer))
    keys = state.cache.keys
    assert 0 < state.cache.redis.ttl(rf.rank_key(keys, viewer)) <= 300
    assert 300 < state.cache.redis.ttl(rf.inputs_key(keys, viewer)) <= 600
    assert orjson.loads(state.cache.redis.get(rf.inputs_key(keys, viewer)))["v"] == version
    state.cache.redis.delete(rf.rank_key(keys, viewer))  # the page expires
    hits = counter("hit", rf.INPUTS_PATH)
    assert page(client, auth(viewer)) == first
    assert counter("hit", rf.INPUTS_PATH) == hits + 1


def test_filler_publishes_with_the_given_ttl(state):
    """Core: ``Filler.fill(ttl=...)`` sets the published keys' TTL (default idle TTL)."""
    scope = Scope("u:77", "ttltest")
    key = state.cache.keys.key("u:77", "ttltest")

    def stage(pipe, temps, data):
        pipe.set(temps[key], data)

    state.filler.fill("test", scope, [key], lambda: "x", stage, ttl=42)
    assert 0 < state.cache.redis.ttl(key) <= 42
    state.filler.fill("test", scope, [key], lambda: "y", stage)
    assert state.cache.redis.ttl(key) > 42
    assert state.cache.redis.get(key) == b"y"


def test_forced_page_whose_version_moves_meanwhile_is_answered_not_kept(
        client, auth, state, monkeypatch):
    """A write applied while a forced page ranks: the page is answered (its posts read in
    the publish's round trip), the ranking it computed is not published (counted as a
    stale fill), and the next page ranks afresh under the new version."""
    world = _world(state, monkeypatch)
    viewer = world.users[7]
    fresh = page(client, auth(viewer))
    vkey = state.cache.keys.version(rf.scope(viewer))
    original = ranked_feed_ops.compute_ranking

    def bumped_meanwhile(*args, **kwargs):
        ranking = original(*args, **kwargs)
        state.cache.redis.incr(vkey)  # as a write's apply would, after its commit
        return ranking

    monkeypatch.setattr(ranked_feed_ops, "compute_ranking", bumped_meanwhile)

    def stale() -> float:
        return REGISTRY.get_sample_value("cache_stale_fills_total", {"path": rf.PATH}) or 0.0

    before = stale()
    assert page(client, auth(viewer), invalidate_cache="true") == fresh
    assert stale() == before + 1
    monkeypatch.setattr(ranked_feed_ops, "compute_ranking", original)
    misses = counter("miss")
    assert page(client, auth(viewer)) == fresh  # nothing else changed: same order
    assert counter("miss") == misses + 1  # the stale ranking was not kept
