"""One-off measurement (not part of the normal suite): a personalized page of 50 posts out
of 100,000, uncached and cached, through the Flask test client (in-process: no HTTP
server, no network between app and client; Postgres and Redis on loopback).

    RANKED_FEED_BENCH=1 TEST_DATABASE_URL=... TEST_REDIS_URL=... \
        .venv/bin/pytest -q -s tests/integration/ranked_feed/test_ranked_feed_bench.py
"""

from __future__ import annotations

import os
import statistics
import time

import pytest
from sqlalchemy import text

from cache import ranked_feed as rf

pytestmark = pytest.mark.skipif(not os.environ.get("RANKED_FEED_BENCH"),
                                reason="one-off benchmark: set RANKED_FEED_BENCH=1")

VIEWER = 1

SEED_SQL = [
    "SELECT setseed(0.42)",
    "INSERT INTO users (id, display_name) SELECT g, 'User ' || g FROM generate_series(1, 10000) g",
    "INSERT INTO collectives (name) SELECT 'C' || g FROM generate_series(1, 50) g",
    "INSERT INTO posts (author_id, title, post_type, collective_id, created_at, like_count, "
    " praise_count, trophy_count, comment_count, view_count) "
    "SELECT 1 + floor(random() * 10000)::int, 'Post ' || g, "
    " (ARRAY['post','prayer','testimony','question'])[1 + floor(random() * 4)::int], "
    " CASE WHEN random() < 0.3 THEN 1 + floor(random() * 50)::int END, "
    " now() - random() * interval '60 days', floor(random() * 30)::int, "
    " floor(random() * 5)::int, floor(random() * 2)::int, floor(random() * 10)::int, "
    " floor(random() * 200)::int "
    "FROM generate_series(1, 100000) g",
    "INSERT INTO fellows (user_id, fellow_id) SELECT 1, g FROM generate_series(2, 201) g",
    "INSERT INTO fellows (user_id, fellow_id) SELECT g, 1 FROM generate_series(2, 201) g",
    "INSERT INTO collective_members (collective_id, user_id) SELECT g, 1 "
    "FROM generate_series(1, 5) g",
    "INSERT INTO post_likes (post_id, user_id) SELECT DISTINCT 1 + floor(random() * 100000)::int,"
    " 1 FROM generate_series(1, 500)",
    "INSERT INTO post_views (post_id, viewer_id) SELECT DISTINCT 1 + floor(random() * 100000)::int,"
    " 1 FROM generate_series(1, 300)",
    "ANALYZE",
]


def timed(fn, n: int) -> tuple[float, float]:
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1000)
    samples.sort()
    return statistics.median(samples), samples[int(len(samples) * 0.95) - 1]


def test_page_of_50_out_of_100k(client, auth, state):
    with state.db.session() as s:
        for sql in SEED_SQL:
            s.execute(text(sql))
        s.commit()
        assert s.execute(text("SELECT count(*) FROM posts")).scalar_one() == 100_000
    h = auth(VIEWER)

    def get(query: str = "") -> None:
        r = client.get(f"/api/posts/?page_size=50{query}", headers=h)
        assert r.status_code == 200 and len(r.get_json()["results"]) == 50

    def cold() -> None:  # nothing of this user in Redis: version, inputs and ranking
        keys = list(state.cache.redis.scan_iter(match=state.cache.keys.pattern()))
        if keys:
            state.cache.redis.delete(*keys)
        get()

    get()
    results = {
        "uncached, cold (version, inputs and ranking rebuilt)": timed(cold, 30),
        "uncached, invalidate_cache=true (inputs cached)": timed(
            lambda: get("&invalidate_cache=true"), 30),
        "cached page 1": timed(get, 300),
        "cached page 3": timed(lambda: get("&page=3"), 300),
    }
    key = rf.rank_key(state.cache.keys, VIEWER)
    (size, kept, *_), _ = rf.decode(state.cache.redis.get(key))
    memory = state.cache.redis.memory_usage(key, samples=0)
    print(f"\nranking size (candidates): {size}, kept {kept}: {memory} bytes in Redis")
    for name, (median, p95) in results.items():
        print(f"{name}: median {median:.2f} ms, p95 {p95:.2f} ms")
    cold_median = results["uncached, cold (version, inputs and ranking rebuilt)"][0]
    assert results["cached page 1"][0] < cold_median
