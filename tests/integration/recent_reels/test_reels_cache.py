"""The recently viewed reels cache: key layout, empty-list hits, single-flight fills, Redis
flush and outage, concurrency for one user, and the measurements of the issue's note."""

from __future__ import annotations

import itertools
import random
import threading
import time

import pytest
from sqlalchemy import text

import storage.recent_reels as storage
from cache import recent_reels
from cache.keys import Keyspace
from cache.outbox import relay_outbox
from service import create_app
from service.settings import Settings
from tests.support.recent_reels import FakeClock, bulk_reels, iso, make_reels, pg_rows, recent


@pytest.fixture
def loads(monkeypatch) -> list[int]:
    """Counts the loads of a whole list from Postgres (fills and fallbacks)."""
    calls: list[int] = []
    original = storage.recent_views

    def counted(session, user_id, limit):
        calls.append(user_id)
        return original(session, user_id, limit)

    monkeypatch.setattr(storage, "recent_views", counted)
    return calls


def zset(state, user_id: int) -> list[tuple[bytes, float]]:
    return state.cache.redis.zrange(recent_reels.key(state.cache.keys, user_id), 0, -1,
                                    withscores=True)


def listing(client, headers) -> list[tuple[int, str, int]]:
    return [(x["reel_id"], x["viewed_at"], x["view_duration"])
            for x in recent(client, headers, per_page=100)["reels"]]


def test_key_format_and_scope():
    assert recent_reels.key(Keyspace("hc:"), 42) == "hc:{u:42}:reels:recent"
    assert recent_reels.scope(42).row_name == "u:42|reels"


def test_max_recent_reel_views_bounded_by_compact_encoding():
    assert Settings.from_env({"MAX_RECENT_REEL_VIEWS": "127"}).max_recent_reel_views == 127
    for bad in ("0", "128"):
        with pytest.raises(ValueError, match="MAX_RECENT_REEL_VIEWS"):
            Settings.from_env({"MAX_RECENT_REEL_VIEWS": bad})


def test_empty_list_is_a_hit_and_first_view_lands(client, auth, state, loads):
    """The sentinel keeps a filled empty list in Redis, and the first view's ZADD finds
    the set (a separate 'filled' marker would let the apply skip it)."""
    [reel] = make_reels(client, auth(1, admin=True), 1)
    h = auth(7)
    for _ in range(3):
        assert recent(client, h)["reels"] == []
    assert loads == [7]
    assert zset(state, 7) == [(b"_", float("-inf"))]
    client.post(f"/api/reels/{reel}/view", json={"view_duration": 4}, headers=h)
    assert [x[0] for x in listing(client, h)] == [reel]
    assert loads == [7]  # still no second load: the write was applied to the cached set
    key = recent_reels.key(state.cache.keys, 7)
    assert 0 < state.cache.redis.ttl(key) <= state.settings.idle_ttl


def test_single_flight_counts(app, auth, state, monkeypatch):
    calls = []
    original = storage.recent_views

    def slow(session, user_id, limit):
        calls.append(user_id)
        time.sleep(0.2)
        return original(session, user_id, limit)

    monkeypatch.setattr(storage, "recent_views", slow)
    # Losers wait for the winner's fill; long enough that a loaded machine cannot make
    # them give up and read Postgres themselves (which is allowed, but not counted here).
    state.cache.lease_wait_ms = 5000
    statuses, barrier = [], threading.Barrier(10)

    def read() -> None:
        client = app.test_client()
        barrier.wait()
        statuses.append(client.get("/api/reels/recently-viewed", headers=auth(7)).status_code)

    threads = [threading.Thread(target=read) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert statuses == [200] * 10
    assert calls == [7]  # ten concurrent misses, one Postgres load


def test_redis_flush_rebuilds_from_postgres(client, auth, admin_headers, state, key_prefix,
                                            loads):
    reels = make_reels(client, admin_headers, 3)
    h = auth(7)
    for reel in reels:
        client.post(f"/api/reels/{reel}/view", headers=h)
    before = listing(client, h)
    redis = state.cache.redis
    redis.delete(*redis.scan_iter(match=f"{key_prefix}*"))
    assert listing(client, h) == before
    # The version copy came back from Postgres (not 1): later writes still apply.
    client.post(f"/api/reels/{reels[0]}/view", headers=h)
    assert listing(client, h)[0][0] == reels[0]
    assert [m for m, _ in zset(state, 7)][-1] == str(reels[0]).encode()
    assert len(loads) == 2  # the first fill and the one after the flush; the write applied


def test_redis_down_same_answers_and_relay_catches_up(app, client, auth, admin_headers, state,
                                                      settings):
    reels = make_reels(client, admin_headers, 4)
    h = auth(7)
    for reel in reels[:2]:
        client.post(f"/api/reels/{reel}/view", json={"view_duration": 2}, headers=h)
    assert len(listing(client, h)) == 2  # cached now

    dead = create_app({"SETTINGS": settings.replace(redis_url="redis://127.0.0.1:1/0"),
                       "TESTING": True})
    try:
        down = dead.test_client()
        for reel in reels[2:]:  # writes during the outage commit (outbox keeps the change)
            r = down.post(f"/api/reels/{reel}/view", json={"view_duration": 3}, headers=h)
            assert r.status_code == 200
        r = down.post("/api/reels/views", json={"views": [{"reel_id": reels[0]}]}, headers=h)
        assert r.get_json()["tracked"] == 1
        from_postgres = listing(down, h)
        assert [x[0] for x in from_postgres] == [reels[0], reels[3], reels[2], reels[1]]
        assert [x[0] for x in from_postgres] == [row[0] for row in pg_rows(state, 7)]
    finally:
        dead.extensions["hc"].close()
    relay_outbox(state.db, state.applier, min_age=0)  # what the breaker's recovery runs
    assert listing(client, h) == from_postgres
    state.cache.enabled = False
    assert listing(client, h) == from_postgres


def test_writes_apply_in_place_without_reloads(client, auth, state, loads, settings):
    n = settings.max_recent_reel_views
    reels = bulk_reels(state, n + 3)
    h = auth(7)
    recent(client, h)  # fill the empty list
    for reel in reels:
        client.post(f"/api/reels/{reel}/view", headers=h)
    assert len(zset(state, 7)) == n + 1  # the newest n and the sentinel
    assert [x[0] for x in listing(client, h)] == [r[0] for r in pg_rows(state, 7)]
    assert loads == [7]


def test_eight_threads_one_user_keep_newest_50(app, auth, state, monkeypatch):
    """8 threads view for the same user (single views at server time and batches with
    out-of-order viewed_at, reads in between): the list is exactly the newest 50 distinct
    reels, in Redis, in Postgres and from the fallback."""
    counter = itertools.count(1_750_000_000_000, 3)  # unique server times
    lock, local = threading.Lock(), threading.local()

    def server_clock() -> int:
        with lock:
            local.now = next(counter)
        return local.now

    monkeypatch.setattr("service.recent_reels.now_ms", server_clock)
    setup = app.test_client()
    reels = bulk_reels(state, 120)
    h = auth(7)
    recent(setup, h)  # start from a filled list
    seen: list[tuple[int, int]] = []  # (reel, viewed_at ms) of every accepted view
    seen_lock = threading.Lock()
    barrier = threading.Barrier(8)
    failures: list[object] = []

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        client = app.test_client()
        barrier.wait()
        for step in range(25):
            if step % 3 == 2:
                base = server_clock()
                views = [(rng.choice(reels), base - rng.randint(0, 400)) for _ in range(5)]
                r = client.post("/api/reels/views", headers=h, json={"views": [
                    {"reel_id": reel, "viewed_at": iso(ms)} for reel, ms in views]})
                mine = views
            else:
                reel = rng.choice(reels)
                r = client.post(f"/api/reels/{reel}/view", headers=h)
                mine = [(reel, local.now)]
            if r.status_code != 200:
                failures.append(r.get_json())
            with seen_lock:
                seen.extend(mine)
            if step % 5 == 0:
                client.get("/api/reels/recently-viewed?per_page=100", headers=h)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []

    newest: dict[int, int] = {}
    for reel, ms in seen:
        newest[reel] = max(ms, newest.get(reel, ms))
    expected = sorted(newest.items(), key=lambda kv: (kv[1], str(kv[0]).encode()),
                      reverse=True)[:50]
    expected_ids = [reel for reel, _ in expected]
    client = app.test_client()
    cached = [x["reel_id"] for x in recent(client, h, per_page=100)["reels"]]
    assert len(cached) == 50 and len(set(cached)) == 50
    assert cached == expected_ids
    assert [row[0] for row in pg_rows(state, 7)] == expected_ids
    assert [ms for _, ms, _ in pg_rows(state, 7)] == [ms for _, ms in expected]
    state.cache.enabled = False
    assert [x["reel_id"] for x in recent(client, h, per_page=100)["reels"]] == expected_ids
    with state.db.session() as s:
        total = s.execute(text("SELECT sum(views_count) FROM reels")).scalar_one()
    assert total == len(seen)


def test_measure_full_list_and_rows_after_1000_views(client, auth, state, monkeypatch,
                                                     capsys):
    """The note's numbers: Redis bytes of one user's full list (compact encoding) and
    Postgres rows per user after 1,000 views."""
    clock = FakeClock()
    monkeypatch.setattr("service.recent_reels.now_ms", clock)
    with state.db.session() as s:  # realistic ids: ten digits
        s.execute(text("ALTER SEQUENCE reels_id_seq RESTART WITH 1000000000"))
        s.commit()
    reels = bulk_reels(state, 300)
    h = auth(7)
    rng = random.Random(5)
    for batch in range(10):
        clock.tick(1000)
        views = [{"reel_id": rng.choice(reels), "view_duration": rng.randint(0, 40),
                  "viewed_at": iso(clock.now - rng.randint(0, 5000))} for _ in range(100)]
        r = client.post("/api/reels/views", json={"views": views}, headers=h)
        assert r.get_json()["tracked"] == 100, batch
        if batch == 0:
            recent(client, h)  # the list is cached from here on; later views apply to it
    key = recent_reels.key(state.cache.keys, 7)
    redis = state.cache.redis
    encoding = redis.object("encoding", key).decode()
    size = redis.memory_usage(key, samples=0)
    with state.db.session() as s:
        rows = s.execute(text("SELECT count(*) FROM reel_views WHERE user_id = 7")).scalar_one()
    with capsys.disabled():
        print(f"\n[reels] 1,000 views: {rows} rows in Postgres; Redis list "
              f"{redis.zcard(key)} entries (50 + sentinel), {encoding}, {size} bytes")
    assert rows == 50 and redis.zcard(key) == 51
    assert encoding in {"listpack", "ziplist"}
    assert size < 2048
    assert [x[0] for x in listing(client, h)] == [r[0] for r in pg_rows(state, 7)]
