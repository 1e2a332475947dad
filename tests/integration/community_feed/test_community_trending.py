"""Durable trending snapshots (service/community_feed_trending.py): one snapshot per start
window however many walks start together, bounded size, pruned by the trending job,
unknown or expired snapshots answered with a 400, reuse across a Redis flush."""

from __future__ import annotations

import base64
import threading

import orjson
from sqlalchemy import delete, func, select, text

from cache.keyspace_admin import clear_keyspace
from jobs.scheduler import default_jobs
from service import community_feed_trending as trending
from service import create_app
from storage.models import TrendingSnapshot
from tests.support.auth import bearer


def _post(client, user):
    r = client.post("/community/posts", json={"title": "p"}, headers=bearer(user))
    assert r.status_code == 201
    return r.get_json()["id"]


def _first(client, limit=2):
    r = client.get("/community/feed", query_string={"feed_type": "trending", "limit": limit})
    assert r.status_code == 200, r.get_json()
    return r.get_json()


def _rows(state) -> list[TrendingSnapshot]:
    with state.db.session() as s:
        return list(s.execute(select(TrendingSnapshot).order_by(TrendingSnapshot.id))
                    .scalars())


def test_concurrent_starts_share_one_snapshot(client, state, settings):
    for i in range(5):
        _post(client, 1 + i % 2)
    down = create_app({"SETTINGS": settings.replace(redis_url="redis://127.0.0.1:1/0"),
                       "TESTING": True})
    try:
        for app in (client.application, down):  # Redis up, then Redis down
            with state.db.session() as s:
                s.execute(delete(TrendingSnapshot))
                s.commit()
            clear_keyspace(state.cache)
            barrier = threading.Barrier(8)
            bodies: list[dict] = []

            def start(app=app, barrier=barrier, bodies=bodies) -> None:
                c = app.test_client()
                barrier.wait(10)
                bodies.append(_first(c))

            threads = [threading.Thread(target=start) for _ in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert len(bodies) == 8
            assert len(_rows(state)) == 1
            assert len({tuple(p["id"] for p in b["posts"]) for b in bodies}) == 1
    finally:
        down.extensions["hc"].close()


def test_snapshot_reused_across_flush_and_bounded(client, state, settings, monkeypatch):
    ids = [_post(client, 1) for _ in range(6)]
    _first(client)
    clear_keyspace(state.cache)  # pointer and copy gone: the row is still shared
    _first(client)
    rows = _rows(state)
    assert len(rows) == 1 and sorted(rows[0].post_ids) == sorted(ids)
    monkeypatch.setattr(trending, "TAIL_HEAD", 1)
    small = create_app({"SETTINGS": settings.replace(trending_max_posts=4,
                                                     trending_snapshot_reuse=0),
                        "TESTING": True})
    try:
        clear_keyspace(state.cache)
        body = _first(small.test_client(), limit=10)
        rows = _rows(state)
        # The window (4 newest) plus the head of the older posts (1): bounded; the post
        # past the floor comes from the snapshot's deep tail in Postgres.
        assert len(rows) == 2 and len(rows[-1].post_ids) == 5
        assert len(rows[-1].scores) == 5 and rows[-1].floor_id == rows[-1].post_ids[-1]
        assert body["total_count"] == 6
        assert [p["id"] for p in body["posts"]] == rows[-1].post_ids + [ids[0]]
    finally:
        small.extensions["hc"].close()


def test_unknown_or_expired_snapshot_is_a_400(client, state):
    for _ in range(3):
        _post(client, 1)
    cursor = _first(client, limit=1)["next_cursor"]
    data = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    for bad in ("12", -1, 2**63, None):
        forged = base64.urlsafe_b64encode(orjson.dumps({**data, "s": bad})).decode()
        r = client.get("/community/feed", query_string={"feed_type": "trending",
                                                         "cursor": forged})
        assert r.status_code == 400 and r.get_json()["code"] == "invalid_cursor"
    # The snapshot expired: row deleted by the job, Redis copy gone.
    with state.db.session() as s:
        s.execute(delete(TrendingSnapshot))
        s.commit()
    clear_keyspace(state.cache)
    r = client.get("/community/feed", query_string={"feed_type": "trending", "limit": 1,
                                                     "cursor": cursor})
    assert r.status_code == 400 and r.get_json()["code"] == "invalid_cursor"


def test_trending_job_prunes_expired_snapshots(client, state):
    _post(client, 1)
    _first(client)
    ttl = state.settings.trending_snapshot_ttl
    with state.db.session() as s:
        s.execute(text("INSERT INTO trending_snapshots (created_at, ref_time, post_ids, scores)"
                       " VALUES (now() - make_interval(secs => :age), now(), '{999999}', '{5}')"),
                  {"age": ttl + 1})
        s.commit()
        assert s.execute(select(func.count()).select_from(TrendingSnapshot)).scalar() == 2
    job = next(j for j in default_jobs(state) if j.name == "community-trending")
    job.run(state)
    rows = _rows(state)
    assert len(rows) == 1 and rows[0].post_ids != [999999]
