"""Fault 7: the cache Redis at ``maxmemory 20mb`` with ``allkeys-lru`` under load.

Writer and reader threads use every read path while a ballast writer pushes ~40 MB of
other keys through the same Redis, so LRU evicts cache keys (and version copies, leases)
at random. No request fails, and afterwards every answer equals Postgres's. The RQ queue
lives on a separate, non-evicting Redis and keeps every job.
"""

from __future__ import annotations

import threading
import time

from rq import Queue

from tests.conftest import bearer
from tests.reliability.conftest import reliability_settings
from tests.reliability.servers import FaultyRedis
from tests.reliability.workload import kinds_for, read_paths, snapshot

USERS = [5001, 5002, 5003]
PER_USER = 12
JOBS = 50
BALLAST_MB = 40


def test_lru_cache_under_memory_pressure(make_app, database_url, tmp_path, queue_redis,
                                         recorder):
    cache_redis = FaultyRedis(tmp_path, "--maxmemory", "20mb",
                              "--maxmemory-policy", "allkeys-lru").start()
    try:
        run(make_app, database_url, cache_redis, queue_redis, recorder)
    finally:
        cache_redis.stop()


def run(make_app, database_url, cache_redis, queue_redis, recorder) -> None:
    cached = make_app(reliability_settings(database_url, cache_redis.url,
                                           rq_redis_url=queue_redis.url))
    plain = make_app(reliability_settings(database_url, queue_redis.url, cache_mode="off"))
    kinds = kinds_for(cached)
    ctx = {k.name: k.seed(cached, cached.test_client(), USERS, PER_USER) for k in kinds}
    paths = read_paths(cached, ctx)
    jobs = Queue(f"{cached.extensions['hc'].settings.queue_prefix}pressure",
                 connection=cached.extensions["hc"].queue_redis)
    for n in range(JOBS):
        jobs.enqueue("tests.job_fixtures.record", "redis://unused", f"k{n}", 0.0)

    prefix = cached.extensions["hc"].settings.key_prefix
    for user in USERS:
        snapshot(cached.test_client(), paths, user)  # warm every read path
    warm_keys = set(cache_redis.client().scan_iter(match=f"{prefix}*", count=1000))
    stop = threading.Event()
    statuses: list[int] = []

    def ballast() -> None:
        client = cache_redis.client()
        chunk = b"b" * 100_000
        for n in range(BALLAST_MB * 10):
            if stop.is_set():
                break
            client.set(f"ballast:{n}", chunk)
        client.close()

    def writer(user: int) -> None:
        client = cached.test_client()
        for i in range(PER_USER):
            for kind in kinds:
                status, _ = kind.write(client, ctx[kind.name], user, i)
                statuses.append(status)

    def reader(user: int) -> None:
        client = cached.test_client()
        k = 0
        while not stop.is_set():
            start = time.perf_counter()
            r = client.get(paths[k % len(paths)], headers=bearer(user))
            recorder.current.add((time.perf_counter() - start) * 1000, r.status_code)
            k += 1

    with recorder.phase("maxmemory 20mb allkeys-lru, ballast + writes + reads") as phase:
        threads = [threading.Thread(target=ballast, daemon=True)]
        threads += [threading.Thread(target=writer, args=(u,), daemon=True) for u in USERS]
        readers = [threading.Thread(target=reader, args=(u,), daemon=True) for u in USERS]
        for t in threads + readers:
            t.start()
        for t in threads:
            t.join(120)
        stop.set()
        for t in readers:
            t.join(10)
        info = cache_redis.client().info()
        phase.notes["evicted_keys"] = info["evicted_keys"]
        phase.notes["used_memory_mb"] = round(info["used_memory"] / 2**20, 1)
        client = cache_redis.client()
        phase.notes["warm_cache_keys"] = len(warm_keys)
        phase.notes["warm_cache_keys_evicted"] = sum(1 for k in warm_keys if not client.exists(k))
    assert not any(t.is_alive() for t in threads + readers)
    assert set(statuses) <= {200, 201}, set(statuses)
    assert set(phase.statuses) == {"200"}, phase.statuses
    assert phase.notes["warm_cache_keys_evicted"] > 0  # the pressure reached the cache
    for user in USERS:
        assert snapshot(cached.test_client(), paths, user) == snapshot(
            plain.test_client(), paths, user), user
    assert jobs.count == JOBS  # the queue Redis does not evict
    assert queue_redis.client().config_get("maxmemory-policy")["maxmemory-policy"] == \
        "noeviction"
