"""A trending walk reaches every live post (API.md section 3), through HTTP.

The trending set in Redis is a window (recent posts, at most ``TRENDING_MAX_POSTS``) plus
the head of the older posts; past its floor a walk continues in Postgres, in the same
order (the trending score at the snapshot's reference time), stable while posts are
added, liked or deleted, and ``total_count`` counts every post the walk returns.
"""

from __future__ import annotations

import base64
import random
import threading
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from sqlalchemy import delete, func, select, text

from cache import community_feed as cf
from cache.keyspace_admin import clear_keyspace
from service import community_feed_trending as trending
from service import create_app
from storage import community_feed as cf_sql
from storage.models import TrendingSnapshot, TrendingSnapshotTail
from tests.support.auth import bearer

ADMIN = bearer(1, admin=True)


def _post(client, user=2):
    r = client.post("/community/posts", json={"title": "p"}, headers=bearer(user))
    assert r.status_code == 201, r.get_json()
    return r.get_json()["id"]


def _old_posts(state, specs):
    """Insert posts created ``days`` ago with the given counters; returns their ids."""
    now = datetime.now(UTC)
    ids = []
    with state.db.session() as s:
        for days, likes, comments, views, featured in specs:
            ids.append(s.execute(text(
                "INSERT INTO posts (author_id, title, created_at, like_count, comment_count,"
                " view_count, is_featured) VALUES (3, 'old', :c, :l, :m, :v, :f) RETURNING id"),
                {"c": now - timedelta(days=days), "l": likes, "m": comments, "v": views,
                 "f": featured}).scalar_one())
        s.commit()
    return ids


def _world(client, state):
    """12 recent posts (some liked) and 16 posts older than the window (168 h), among
    them a 10-day-old post with 1,000 likes."""
    rng = random.Random(7)
    specs = [(10, 1000, 0, 0, False)]
    specs += [(8 + i, rng.randint(0, 60), rng.randint(0, 9), rng.randint(0, 300), i % 5 == 0)
              for i in range(13)]
    specs += [(9, 0, 0, 0, False), (20, 0, 0, 0, False)]  # no engagement: ties by id
    old = _old_posts(state, specs)
    recent = [_post(client, 2 + i % 3) for i in range(12)]
    for n, pid in enumerate(recent[:8]):
        for u in range(n % 4):
            client.post(f"/community/posts/{pid}/like", headers=bearer(100 + u))
        if n % 3 == 0:
            client.post(f"/community/posts/{pid}/comments", json={"body": "c"},
                        headers=bearer(150))
    _fresh_walks(state)
    return old, recent


def _fresh_walks(state):
    with state.db.session() as s:
        s.execute(delete(TrendingSnapshot))
        s.commit()
    clear_keyspace(state.cache)  # the trending set is rebuilt from Postgres


def _page(client, cursor=None, limit=4, headers=None):
    q = {"feed_type": "trending", "limit": limit, **({"cursor": cursor} if cursor else {})}
    r = client.get("/community/feed", query_string=q, headers=headers or {})
    assert r.status_code == 200, r.get_json()
    return r.get_json()


def _walk(client, limit, between=lambda i: None, client_for=lambda i: None):
    seen, totals, body, i = [], [], None, 0
    while body is None or body["has_more"]:
        body = _page(client_for(i) or client, body["next_cursor"] if body else None, limit)
        seen += [p["id"] for p in body["posts"]]
        totals.append(body["total_count"])
        i += 1
        between(i)
        assert i < 500
    return seen, totals


def _snapshot(state):
    with state.db.session() as s:
        return s.execute(select(TrendingSnapshot).order_by(
            TrendingSnapshot.id.desc()).limit(1)).scalar_one()


def _expected(state, snap):
    """Every live post created before the snapshot, by API.md's score at its reference
    time from the counters in Postgres, best first (ties: id desc)."""
    with state.db.session() as s:
        rows = s.execute(text(
            "SELECT id, created_at, like_count, comment_count, view_count, is_featured "
            "FROM posts WHERE deleted_at IS NULL AND (created_at <= :t OR id = ANY(:ids))"),
            {"t": snap.created_at, "ids": snap.post_ids}).all()
    ref = snap.ref_time.timestamp()
    keys = [(cf.trending_score(lk, c, v, f, created.timestamp(), ref), pid)
            for pid, created, lk, c, v, f in rows]
    return [pid for _, pid in sorted(keys, reverse=True)]


@pytest.mark.parametrize("head,max_posts", [(1000, 10_000), (3, 10_000), (3, 5), (1, 5)])
def test_walk_reaches_every_post_once_in_score_order(client, state, settings, monkeypatch,
                                                     head, max_posts):
    monkeypatch.setattr(trending, "TAIL_HEAD", head)
    app = create_app({"SETTINGS": settings.replace(trending_max_posts=max_posts),
                      "TESTING": True})
    try:
        c = app.test_client()
        old, recent = _world(c, state)
        for limit in (1, 4, 50):
            seen, totals = _walk(c, limit)
            snap = _snapshot(state)
            assert len(seen) == len(set(seen)) == len(old) + len(recent), limit
            assert seen == _expected(state, snap), limit
            assert set(totals) == {len(old) + len(recent)}, limit
            # The 10-day-old post with 1,000 likes is there, above every unliked recent one.
            assert seen.index(old[0]) < min(seen.index(p) for p in recent[8:])
        complete = head >= 16 and max_posts > 12
        assert (snap.floor_score is None) == complete
        if not complete:  # the walk did go past the floor, into Postgres
            with state.db.session() as s:
                assert s.execute(select(func.count()).select_from(TrendingSnapshotTail)
                                 ).scalar_one() > 0
    finally:
        app.extensions["hc"].close()


@pytest.mark.parametrize("loss", ["none", "flush", "down"])
def test_walk_stable_while_posts_are_added_liked_and_deleted(client, state, settings,
                                                             monkeypatch, loss):
    monkeypatch.setattr(trending, "TAIL_HEAD", 3)
    old, recent = _world(client, state)
    down = create_app({"SETTINGS": settings.replace(redis_url="redis://127.0.0.1:1/0"),
                       "TESTING": True})
    rng = random.Random(3)
    added, deleted = [], set()
    try:
        first = _page(client, limit=3)
        snap = _snapshot(state)
        order = _expected(state, snap)
        assert first["total_count"] == len(order) == len(old) + len(recent)
        seen = [p["id"] for p in first["posts"]]
        body = first
        rounds = 0
        while body["has_more"]:
            unseen = [p for p in order if p not in seen and p not in deleted]
            # The lowest-ranked unseen posts (deep ones) and a seen one gain many likes,
            # a seen one loses one, an unseen one is deleted, posts are added.
            for pid in unseen[-2:] + seen[-1:]:
                for u in range(12):
                    client.post(f"/community/posts/{pid}/like", headers=bearer(300 + u))
            client.delete(f"/community/posts/{seen[0]}/like", headers=bearer(100))
            if rounds % 3 == 1 and len(unseen) > 3:
                victim = rng.choice(unseen[1:-1])
                assert client.delete(f"/community/posts/{victim}", headers=ADMIN
                                     ).status_code == 204
                deleted.add(victim)
            added.append(_post(client, 4))
            if loss == "flush":
                clear_keyspace(state.cache)
            c = down.test_client() if loss == "down" and rounds % 2 else client
            body = _page(c, body["next_cursor"], limit=3)
            seen += [p["id"] for p in body["posts"]]
            assert body["total_count"] == len(order) - len(deleted)
            rounds += 1
        assert rounds >= 8
        assert len(seen) == len(set(seen)), "a post appeared twice in one walk"
        assert not set(seen) & set(added)  # posts written after the walk began: next walk
        # Exactly the posts of the start, minus the deleted ones; above the floor in the
        # snapshot's order, below it in the order frozen in the deep tail.
        want = [p for p in order if p not in deleted]
        assert sorted(seen) == sorted(want)
        head = [p for p in seen if p in set(snap.post_ids)][:5]
        assert head == [p for p in snap.post_ids if p not in deleted][:5]
        with state.db.session() as s:
            tail = list(s.execute(select(TrendingSnapshotTail.post_id)
                                  .where(TrendingSnapshotTail.snapshot_id == snap.id)
                                  .order_by(TrendingSnapshotTail.score.desc(),
                                            TrendingSnapshotTail.post_id.desc())).scalars())
        assert tail and seen[-len([t for t in tail if t not in deleted]):] == [
            t for t in tail if t not in deleted]
        # A new walk sees the new posts too.
        _fresh_walks(state)
        fresh, totals = _walk(client, 50)
        assert set(fresh) == set(want) | set(added) and totals[0] == len(fresh)
    finally:
        down.extensions["hc"].close()


def test_first_deep_pages_write_the_tail_once(client, state, monkeypatch):
    monkeypatch.setattr(trending, "TAIL_HEAD", 2)
    old, recent = _world(client, state)
    first = _page(client, limit=1)
    floor = _snapshot(state).floor_score
    assert floor is not None
    # A cursor at the floor: the next page is the first deep one.
    data = orjson.loads(base64.urlsafe_b64decode(
        first["next_cursor"] + "=" * (-len(first["next_cursor"]) % 4)))
    deep = dict(data, k=[floor, _snapshot(state).floor_id])
    cursor = base64.urlsafe_b64encode(orjson.dumps(deep)).decode().rstrip("=")
    barrier = threading.Barrier(6)
    bodies, errors = [], []

    def run():
        c = client.application.test_client()
        try:
            barrier.wait(10)
            bodies.append(_page(c, cursor, limit=50))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(bodies) == 6
    assert len({tuple(p["id"] for p in b["posts"]) for b in bodies}) == 1
    with state.db.session() as s:
        n = s.execute(select(func.count()).select_from(TrendingSnapshotTail)).scalar_one()
    snap = _snapshot(state)
    assert n == len(old) + len(recent) - len(snap.post_ids) + sum(
        1 for sc, pid in zip(snap.scores, snap.post_ids, strict=True)
        if (sc, pid) < (snap.floor_score, snap.floor_id))
    # The trending job's pruning takes the tail with its snapshot.
    with state.db.session() as s:
        assert cf_sql.delete_snapshots_older_than(s, 0) == 1
        s.commit()
        assert s.execute(select(func.count()).select_from(TrendingSnapshotTail)
                         ).scalar_one() == 0


def test_bad_trending_cursors_are_400_naming_the_cursor(client, state, monkeypatch):
    monkeypatch.setattr(trending, "TAIL_HEAD", 2)
    _world(client, state)
    cursor = _page(client, limit=2)["next_cursor"]
    data = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    assert "fl" in data
    for bad in ({"fl": "x"}, {"fl": [1]}, {"fl": [1, -2]}, {"fl": [1, 2**63]},
                {"fl": [1.5, 2]}, {"k": [1, "a"]}, {"s": 0}):
        forged = base64.urlsafe_b64encode(orjson.dumps({**data, **bad})).decode()
        r = client.get("/community/feed", query_string={"feed_type": "trending",
                                                         "cursor": forged})
        assert r.status_code == 400, bad
        assert r.get_json()["code"] == "invalid_cursor" and "cursor" in r.get_json()["details"]
    for raw in ("%%%", "a" * 2001, "e30"):
        r = client.get("/community/feed", query_string={"feed_type": "trending",
                                                         "cursor": raw})
        assert r.status_code == 400 and "cursor" in r.get_json()["details"], raw


def test_deep_tail_keeps_collective_posts_for_members(client, state, monkeypatch):
    monkeypatch.setattr(trending, "TAIL_HEAD", 1)
    coll = client.post("/api/collectives/", json={"name": "c"}, headers=ADMIN).get_json()["id"]
    client.post(f"/api/collectives/{coll}/join/", headers=bearer(7))
    old = _old_posts(state, [(9 + i, 10 * i, 0, 0, False) for i in range(6)])
    with state.db.session() as s:
        s.execute(text("UPDATE posts SET collective_id = :c WHERE id = ANY(:ids)"),
                  {"c": coll, "ids": old[:3]})
        s.commit()
    recent = [_post(client) for _ in range(3)]
    _fresh_walks(state)
    for headers, want in ((bearer(7), old + recent), ({}, old[3:] + recent),
                          (bearer(8), old[3:] + recent), (ADMIN, old + recent)):
        seen, body = [], None
        while body is None or body["has_more"]:
            body = _page(client, body["next_cursor"] if body else None, 2, headers)
            seen += [p["id"] for p in body["posts"]]
            assert body["total_count"] == len(want)
        assert sorted(seen) == sorted(want)
    assert _snapshot(state).floor_score is not None
