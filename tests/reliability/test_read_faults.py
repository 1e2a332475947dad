"""Faults on the read side.

2. No stale read after invalidation: a read that starts after a write was acknowledged
   reflects it, across a Redis restart (versions reload from Postgres, never restart at 1)
   and a FLUSHALL.
6. Redis frozen (SIGSTOP) or unreachable (a proxy that stalls or drops traffic): reads keep
   answering from Postgres within the Redis timeout, nothing hangs, DB connections stay
   within the pool cap, and after recovery the cache is trusted again only once the
   outbox is drained (writes made during the outage show at once).
   Excess load beyond the DB pool gets 503 + Retry-After quickly instead of queueing.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import text

from cache import stats
from tests.reliability.workload import kinds_for, normalized, read_paths, snapshot
from tests.support.auth import bearer
from tests.support.metrics import counter_total
from tests.support.reliability import reliability_settings

USERS = [3001, 3002]
PER_USER = 6
READERS = 8
REQUEST_BOUND_S = 1.5  # no request may take longer than this during a Redis fault
PHASE_READS = 3 * READERS  # reads a phase must see (after the breaker opened, in a fault)
PHASE_TIMEOUT = 20.0


def write_round(app, kinds, ctx, users, i) -> None:
    client = app.test_client()
    for user in users:
        for kind in kinds:
            status, _ = kind.write(client, ctx[kind.name], user, i)
            assert status in (200, 201), (kind.name, status)


def seeded(make_app, database_url, cache_url, queue_url, **changes):
    cached = make_app(reliability_settings(database_url, cache_url, rq_redis_url=queue_url,
                                           **changes))
    plain = make_app(reliability_settings(database_url, queue_url, cache_mode="off"))
    kinds = kinds_for(cached)
    client = cached.test_client()
    ctx = {k.name: k.seed(cached, client, USERS, PER_USER) for k in kinds}
    return cached, plain, kinds, ctx


def assert_fresh(cached, plain, ctx) -> None:
    paths = read_paths(cached, ctx)
    for user in USERS:
        assert snapshot(cached.test_client(), paths, user) == snapshot(
            plain.test_client(), paths, user), user


def test_no_stale_read_after_write_restart_or_flushall(make_app, database_url, faulty_redis,
                                                       redis_url):
    # Timeouts no starved host reaches: a timed-out read would fall back to Postgres, and
    # this test counts fallbacks (it is about stale reads, not slow Redis).
    cached, plain, kinds, ctx = seeded(make_app, database_url, faulty_redis.url, redis_url,
                                       redis_read_timeout=2.0, redis_connect_timeout=2.0)
    paths = read_paths(cached, ctx)
    served: list[dict[str, float]] = []  # per round: the cache's outcomes of its reads
    for i in range(PER_USER):
        before = cache_outcomes()
        snapshot(cached.test_client(), paths, USERS[0])  # cache is warm
        write_round(cached, kinds, ctx, USERS, i)
        assert_fresh(cached, plain, ctx)  # every read after the ack sees the write
        served.append({k: v - before[k] for k, v in cache_outcomes().items()})
        if i == 1:
            faulty_redis.restart()  # empty: version copies reload from Postgres
            # Reads that fall back to Postgres would pass without using the new Redis:
            # read until one is answered by the cache (the breaker, if it opened, closed).
            assert cache_answers(cached, paths[0]), cached.extensions["hc"].cache.breaker.state
        if i == 3:
            faulty_redis.client().flushall()
    # The rounds after the restart and after the FLUSHALL read through the cache: they
    # missed more than a warm round (the keys were gone and were refilled) and fell back
    # to Postgres no more often (the app with the cache off counts its reads as fallbacks;
    # the counters are per process).
    warm = served[1]
    for i in (2, 4):
        assert served[i]["miss"] > warm["miss"], (i, served)
        assert served[i]["fallback"] <= warm["fallback"], (i, served)
        assert served[i]["hit"] > 0, (i, served)
    with cached.extensions["hc"].db.engine.connect() as conn:
        truth = dict(conn.execute(text("SELECT name, version FROM cache_versions")).all())
    prefix = cached.extensions["hc"].settings.key_prefix
    checked = 0
    for key in faulty_redis.client().scan_iter(match=f"{prefix}{{*}}:v:*"):
        tag, _, name = key.decode().removeprefix(prefix).partition("}:v:")
        row = f"{tag.lstrip('{')}|{name}"
        if row in truth:
            copy = int(faulty_redis.client().get(key))
            assert copy == truth[row], key  # a copy is never behind (or ahead of) Postgres
            checked += 1
    assert checked, "no version copies in Redis"


@pytest.mark.xfail(strict=True, reason=(
    "known gap: a cache Redis restored from an older RDB/AOF snapshot brings back old "
    "pages together with their old version copies; nothing compares the copies with "
    "Postgres after a restart, so stale pages are served until the scope's next write. "
    "The promise holds for a cache Redis without persistence (the production setting "
    "documented for REDIS_URL) and after a FLUSHALL."))
def test_no_stale_read_after_restore_from_old_snapshot(make_app, database_url, tmp_path,
                                                       redis_url):
    from tests.support.fault_servers import FaultyRedis

    server = FaultyRedis(tmp_path, "--dbfilename", "dump.rdb").start()
    try:
        cached, plain, kinds, ctx = seeded(make_app, database_url, server.url, redis_url)
        write_round(cached, kinds, ctx, USERS, 0)
        assert_fresh(cached, plain, ctx)
        server.client().save()  # the snapshot a crash will roll back to
        write_round(cached, kinds, ctx, USERS, 1)
        server.restart()  # loads dump.rdb: the older state
        time.sleep(0.6)
        assert_fresh(cached, plain, ctx)
    finally:
        server.stop()


def cache_outcomes() -> dict[str, float]:
    return {o: counter_total(stats.CACHE_EVENTS, o) for o in ("hit", "miss", "fallback")}


def cache_answers(app, path: str, timeout: float = 10.0) -> bool:
    """Read ``path`` until a read is answered without a fallback to Postgres (at most
    ``timeout`` seconds); returns whether one was."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        before = counter_total(stats.CACHE_EVENTS, "fallback")
        app.test_client().get(path, headers=bearer(USERS[0]))
        if (counter_total(stats.CACHE_EVENTS, "fallback") == before
                and app.extensions["hc"].cache.breaker.state == "closed"):
            return True
        time.sleep(0.05)
    return False


def read_load(app, paths, stop: threading.Event, phase_of, truth
              ) -> tuple[list[str], list[threading.Thread]]:
    """READERS threads reading every path until ``stop``; returns (wrong answers, threads)."""
    wrong: list[str] = []

    def reader(n: int) -> None:
        client = app.test_client()
        user = USERS[n % len(USERS)]
        k = n
        while not stop.is_set():
            path = paths[k % len(paths)]
            k += 1
            start = time.perf_counter()
            r = client.get(path, headers=bearer(user))
            phase_of().add((time.perf_counter() - start) * 1000, r.status_code)
            if r.status_code == 200 and normalized(r.get_json()) != truth[user][path][1]:
                wrong.append(f"{user} {path}")

    threads = [threading.Thread(target=reader, args=(n,), daemon=True) for n in range(READERS)]
    for t in threads:
        t.start()
    return wrong, threads


def pool_sampler(app, stop: threading.Event, peak: list[int]) -> threading.Thread:
    pool = app.extensions["hc"].db.engine.pool

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], pool.checkedout())
            time.sleep(0.005)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("fault", ["sigstop", "proxy_stall", "proxy_drop"])
def test_redis_frozen_or_unreachable(fault, make_app, database_url, faulty_redis, redis_url,
                                     proxy, recorder):
    link = proxy(faulty_redis.port)
    cached, plain, kinds, ctx = seeded(make_app, database_url, link.url, redis_url)
    state = cached.extensions["hc"]
    write_round(cached, kinds, ctx, USERS, 0)
    paths = read_paths(cached, ctx)
    truth = {u: snapshot(plain.test_client(), paths, u) for u in USERS}
    for user in USERS:
        snapshot(cached.test_client(), paths, user)  # warm

    stop = threading.Event()
    peak = [0]
    breaker = state.cache.breaker
    try:
        with recorder.phase("healthy") as healthy:
            wrong, readers = read_load(cached, paths, stop, lambda: recorder.current, truth)
            sampler = pool_sampler(cached, stop, peak)
            # Healthy means the breaker is closed too (a starved host can time a read out
            # and open it), so the fault's reads are the ones that open it.
            assert healthy.wait(lambda: healthy.requests >= PHASE_READS
                                and breaker.state == "closed", PHASE_TIMEOUT)
        with recorder.phase(f"redis {fault}") as down:
            began = time.monotonic()
            if fault == "sigstop":
                faulty_redis.freeze()
            else:
                link.set_mode("stall" if fault == "proxy_stall" else "drop")
            opened: list[tuple[float, int]] = []  # (when, requests so far)

            def met_the_fault() -> bool:
                """Reads met the broken Redis (their failures opened the breaker), then went
                on past two cooldowns (half-open probes that found it still broken)."""
                if not opened and breaker.state == "open":
                    opened.append((time.monotonic(), down.requests))
                return bool(opened) and (
                    down.requests - opened[0][1] >= PHASE_READS
                    and time.monotonic() - opened[0][0] >= 2 * breaker.cooldown)

            assert down.wait(met_the_fault, PHASE_TIMEOUT), (breaker.state, down.requests)
            down.notes.update(breaker="open", opened_after_s=round(opened[0][0] - began, 2),
                              reads_before_open=opened[0][1])
    finally:
        stop.set()
        for t in [*readers, sampler]:
            t.join(10)
    assert not any(t.is_alive() for t in readers), "a reader hung"
    assert not wrong, wrong[:5]
    assert set(down.statuses) == {"200"}, down.statuses
    assert max(down.latencies) < REQUEST_BOUND_S * 1000
    assert peak[0] <= state.settings.db_pool_size
    down.notes["db_pool_peak"] = peak[0]

    # Writes during the outage commit to Postgres; their cache changes wait in the outbox.
    with recorder.phase("writes during outage") as writes:
        start = time.perf_counter()
        write_round(cached, kinds, ctx, USERS, 1)
        writes.add((time.perf_counter() - start) * 1000, "round")
    with state.db.engine.connect() as conn:
        pending = conn.execute(text("SELECT count(*) FROM cache_outbox")).scalar()
    assert pending > 0
    writes.notes["outbox_rows"] = pending

    with recorder.phase("recovered") as rec:
        if fault == "sigstop":
            faulty_redis.thaw()
        else:
            link.set_mode("pass")
        deadline = time.monotonic() + 10
        while state.cache.breaker.state != "closed" and time.monotonic() < deadline:
            start = time.perf_counter()
            r = cached.test_client().get(paths[0], headers=bearer(USERS[0]))
            rec.add((time.perf_counter() - start) * 1000, r.status_code)
            time.sleep(0.05)
        rec.notes["breaker_closed_after_s"] = round(10 - (deadline - time.monotonic()), 2)
        assert state.cache.breaker.state == "closed"
        with state.db.engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM cache_outbox")).scalar() == 0
        hits = _hits()
        assert_fresh(cached, plain, ctx)  # the outage's writes show through the cache
        rec.notes["cache_hits_after"] = _hits() - hits
    assert rec.notes["cache_hits_after"] > 0


def _hits() -> float:
    return counter_total(stats.CACHE_EVENTS, "hit")


def test_overload_beyond_db_pool_gets_503(make_app, database_url, faulty_redis, redis_url,
                                          recorder):
    cached, plain, kinds, ctx = seeded(make_app, database_url, faulty_redis.url, redis_url,
                                       db_pool_size=3, db_pool_timeout=0.2)
    paths = read_paths(cached, ctx)
    faulty_redis.kill9()  # every read needs Postgres
    engine = cached.extensions["hc"].db.engine
    held = [engine.connect() for _ in range(3)]  # the pool is busy with slow work
    for conn in held:
        conn.execute(text("SELECT 1"))

    def one(n: int) -> tuple[int, float, str | None]:
        start = time.perf_counter()
        r = cached.test_client().get(paths[n % len(paths)], headers=bearer(USERS[0]))
        return r.status_code, (time.perf_counter() - start) * 1000, r.headers.get("Retry-After")

    with recorder.phase("pool exhausted, redis down") as busy:
        with ThreadPoolExecutor(16) as pool:
            results = list(pool.map(one, range(48), timeout=30))
        for status, ms, _ in results:
            busy.add(ms, status)
    for conn in held:
        conn.close()
    assert {s for s, _, _ in results} == {503}
    assert all(retry == "1" for _, _, retry in results)
    assert max(ms for _, ms, _ in results) < 1500  # bounded by the pool timeout, no queue
    with recorder.phase("pool free again") as free:
        # No more at once than the pool holds: a fourth request would wait for a
        # connection, and on a starved host the 0.2 s pool timeout can pass (a 503).
        with ThreadPoolExecutor(3) as pool:
            again = list(pool.map(one, range(12), timeout=30))
        for status, ms, _ in again:
            free.add(ms, status)
    assert {s for s, _, _ in again} == {200}
