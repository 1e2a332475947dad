"""Fault 7: the cache Redis at ``maxmemory 20mb`` with ``allkeys-lru`` under load.

Writer and reader threads use every write and read path while a ballast writer pushes
~40 MB of other keys through the same Redis, so LRU evicts cache keys (and version copies,
leases) at random; they run until the ballast is in and at least ``UNDER_PRESSURE`` writes
and reads have begun since Redis started evicting. No request fails, and afterwards every
answer equals Postgres's. The RQ queue lives on a separate, non-evicting Redis and keeps
every job.
"""

from __future__ import annotations

import threading
import time

from rq import Queue

from tests.reliability.workload import Writers, kinds_for, read_paths, snapshot
from tests.support.auth import bearer
from tests.support.fault_servers import FaultyRedis
from tests.support.reliability import reliability_settings

WRITERS = READERS = 3
USERS = [5001 + n for n in range(WRITERS * 4)]  # a writer moves on after PER_USER writes
PER_USER = 12
UNDER_PRESSURE = 20  # writes and reads that must begin once Redis is evicting
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
        jobs.enqueue("tests.support.job_fixtures.record", "redis://unused", f"k{n}", 0.0)

    prefix = cached.extensions["hc"].settings.key_prefix
    for user in USERS[:READERS]:
        snapshot(cached.test_client(), paths, user)  # warm every read path
    warm_keys = set(cache_redis.client().scan_iter(match=f"{prefix}*", count=1000))
    stop = threading.Event()
    evicting: list[float] = []  # when Redis began to evict
    read_starts: list[float] = []
    ballast_done = threading.Event()

    def ballast() -> None:
        client = cache_redis.client()
        chunk = b"b" * 100_000
        try:
            for n in range(BALLAST_MB * 10):
                if stop.is_set():
                    break
                client.set(f"ballast:{n}", chunk)
                if not evicting and n % 10 == 0 and client.info("stats")["evicted_keys"]:
                    evicting.append(time.monotonic())
        finally:
            client.close()
            ballast_done.set()

    def reader(user: int) -> None:
        client = cached.test_client()
        k = 0
        while not stop.is_set():
            start = time.perf_counter()
            read_starts.append(time.monotonic())
            r = client.get(paths[k % len(paths)], headers=bearer(user))
            recorder.current.add((time.perf_counter() - start) * 1000, r.status_code)
            k += 1

    def under_pressure(outcomes_since) -> tuple[int, int]:
        """(writes, reads) begun since Redis began to evict."""
        if not evicting:
            return 0, 0
        return (len(outcomes_since(evicting[0])),
                sum(1 for t in read_starts if t >= evicting[0]))

    writers = Writers(cached, kinds, ctx, USERS, threads=WRITERS, per_user=PER_USER,
                      pause=0.0)
    with recorder.phase("maxmemory 20mb allkeys-lru, ballast + writes + reads") as phase:
        threads = [threading.Thread(target=ballast, daemon=True)]
        threads += [threading.Thread(target=reader, args=(u,), daemon=True)
                    for u in USERS[:READERS]]
        try:
            writers.start()
            for t in threads:
                t.start()
            # Until the ballast is in and both writes and reads met the evicting Redis.
            met = writers.wait(lambda: ballast_done.is_set() and min(
                under_pressure(writers.between)) >= UNDER_PRESSURE, 120)
        finally:
            stop.set()
            writers.stop()
            for t in threads:
                t.join(10)
        phase.notes["writes"], phase.notes["reads"] = len(writers.outcomes), phase.requests
        (phase.notes["writes_while_evicting"],
         phase.notes["reads_while_evicting"]) = under_pressure(writers.between)
        info = cache_redis.client().info()
        phase.notes["evicted_keys"] = info["evicted_keys"]
        phase.notes["used_memory_mb"] = round(info["used_memory"] / 2**20, 1)
        client = cache_redis.client()
        phase.notes["warm_cache_keys"] = len(warm_keys)
        phase.notes["warm_cache_keys_evicted"] = sum(1 for k in warm_keys if not client.exists(k))
    assert not any(t.is_alive() for t in threads)
    assert met, (evicting, phase.notes)
    assert writers.exhausted == 0, "writers ran out of users: raise USERS"
    statuses = {o.status for o in writers.outcomes}
    assert statuses <= {200, 201}, statuses
    assert set(phase.statuses) == {"200"}, phase.statuses
    assert phase.notes["warm_cache_keys_evicted"] > 0  # the pressure reached the cache
    for user in sorted({o.user for o in writers.outcomes} | set(USERS[:READERS])):
        assert snapshot(cached.test_client(), paths, user) == snapshot(
            plain.test_client(), paths, user), user
    assert jobs.count == JOBS  # the queue Redis does not evict
    assert queue_redis.client().config_get("maxmemory-policy")["maxmemory-policy"] == \
        "noeviction"
