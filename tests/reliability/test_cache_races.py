"""Races of the cache core, proven end to end through the HTTP endpoints of every read path
(the mechanisms alone are in tests/integration/platform/test_cache_core.py).

3. Crash between commit and cache update: a process dies (``os._exit``) right after its
   Postgres commit; the scheduler's outbox relay repairs the cache within its stated
   bound (OUTBOX_MIN_AGE + OUTBOX_RELAY_INTERVAL, plus one scheduler tick).
4. Stale-fill race: a reader's fill is paused (after its load from Postgres) while a write
   lands; the fill cannot publish the older state, and the next read shows the write.
5. Stampede: 200 concurrent requests on a just-invalidated hot key cost at most 2 loads
   from Postgres per key.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import text

from cache import stats
from cache.outbox import OUTBOX_MIN_AGE
from storage.db import DB_QUERIES
from tests.reliability.crash_write import CRASHED
from tests.reliability.workload import kinds_for, normalized, read_paths, snapshot
from tests.support import ROOT as PROJECT_ROOT
from tests.support.auth import bearer
from tests.support.metrics import counter_total
from tests.support.reliability import reliability_settings

ROOT = PROJECT_ROOT
USERS = [4001, 4002]
PER_USER = 5
RELAY_INTERVAL = 1
# Write kinds whose own API view (``WriteKind.in_api``) reads Postgres, not the cache.
UNCACHED_VIEW = {"like"}


def env_for(settings) -> dict[str, str]:
    return {
        **os.environ,
        "DATABASE_URL": settings.database_url,
        "REDIS_URL": settings.redis_url,
        "RQ_REDIS_URL": settings.rq_redis_url,
        "CACHE_KEY_PREFIX": settings.key_prefix,
        "RQ_QUEUE_PREFIX": settings.queue_prefix,
        "JWT_SECRET": settings.jwt_secret,
        "OUTBOX_RELAY_INTERVAL": str(RELAY_INTERVAL),
        "LOG_LEVEL": "WARNING",
    }


def build_apps(make_app, database_url, cache_url, queue_url, **changes):
    cached = make_app(reliability_settings(database_url, cache_url, rq_redis_url=queue_url,
                                           **changes))
    plain = make_app(reliability_settings(database_url, queue_url, cache_mode="off"))
    kinds = kinds_for(cached)
    ctx = {k.name: k.seed(cached, cached.test_client(), USERS, PER_USER) for k in kinds}
    return cached, plain, kinds, ctx


@pytest.fixture
def apps(make_app, database_url, faulty_redis, redis_url):
    return build_apps(make_app, database_url, faulty_redis.url, redis_url)


@pytest.fixture
def stampede_apps(make_app, database_url, faulty_redis, redis_url):
    """A stampede tests single flight, not the timeouts: 50 threads on a starved 2-core host
    can stretch a Redis call past the production 100 ms, which opens the breaker and sends
    every request to Postgres, and can keep a request waiting for one of the 10 pooled
    connections past the production 2 s, which answers 503 (the breaker's and the pool's
    own tests cover those)."""
    return build_apps(make_app, database_url, faulty_redis.url, redis_url,
                      redis_read_timeout=2.0, redis_connect_timeout=2.0,
                      lease_wait_ms=5000, lease_ttl_ms=10000, db_pool_timeout=30.0)


def stale_paths(cached, plain, paths) -> list[str]:
    out = []
    for user in USERS:
        a = snapshot(cached.test_client(), paths, user)
        b = snapshot(plain.test_client(), paths, user)
        out += [f"{user} {p}" for p in paths if a[p] != b[p]]
    return out


def first_line(proc: subprocess.Popen, timeout: float) -> str:
    """The first line ``proc`` prints, or "" if it prints none within ``timeout``."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    return proc.stdout.readline().strip() if ready else ""


def outbox_rows(app) -> int:
    with app.extensions["hc"].db.engine.connect() as conn:
        return conn.execute(text("SELECT count(*) FROM cache_outbox")).scalar_one()


def versions_behind(app) -> list[str]:
    """Version rows whose copy in the cache Redis is older than Postgres's."""
    state = app.extensions["hc"]
    prefix = state.settings.key_prefix
    with state.db.engine.connect() as conn:
        truth = dict(conn.execute(text("SELECT name, version FROM cache_versions")).all())
    behind = []
    for key in state.cache.redis.scan_iter(match=f"{prefix}{{*}}:v:*", count=1000):
        tag, _, name = key.decode().removeprefix(prefix).partition("}:v:")
        row = f"{tag.lstrip('{')}|{name}"
        copy = state.cache.redis.get(key)
        if row in truth and copy is not None and int(copy) < truth[row]:
            behind.append(row)
    return sorted(behind)


def test_crash_after_commit_repaired_by_relay(apps, recorder):
    cached, plain, kinds, ctx = apps
    settings = cached.extensions["hc"].settings
    env = env_for(settings)
    paths = read_paths(cached, ctx)
    for user in USERS:
        snapshot(cached.test_client(), paths, user)  # warm: the crash will leave it stale
        cached.test_client().get("/api/posts/?ordering=personalized", headers=bearer(user))
    flask = str(Path(sys.executable).with_name("flask"))
    # The scheduler runs all along, as in production; the relay's cadence key shows it ran.
    scheduler = subprocess.Popen([flask, "--app", "service", "scheduler"], cwd=ROOT, env=env,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    queue = cached.extensions["hc"].queue_redis
    cadence = f"{settings.key_prefix}scheduler:outbox-relay:cadence"
    try:
        deadline = time.monotonic() + 30
        while not queue.exists(cadence) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert queue.exists(cadence), "scheduler did not start"
        crashers = [
            subprocess.Popen(
                [sys.executable, "-m", "tests.reliability.crash_write",
                 json.dumps({"kind": k.name, "ctx": ctx[k.name], "user": USERS[0], "i": 0})],
                cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL, text=True)
            for k in kinds
        ]
        # All of them write at once, so none is repaired before the last one has died.
        for p in crashers:
            assert first_line(p, 60) == "ready", p.poll()
        for p in crashers:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        codes = {}
        for k, p in zip(kinds, crashers, strict=True):
            p.communicate(timeout=60)
            codes[k.name] = p.returncode
        crashed_at = time.monotonic()
        # Every write committed with its cache change and then died: none was left out.
        assert all(c == CRASHED for c in codes.values()), codes
        keys = {k.name: k.key_of(ctx[k.name], USERS[0], 0) for k in kinds}
        bound = OUTBOX_MIN_AGE + RELAY_INTERVAL + 0.5  # + one scheduler tick
        with recorder.phase("after crash until repaired") as phase:
            phase.notes["crashed"] = sorted(codes)
            # Quickest first: the relay may repair rows OUTBOX_MIN_AGE after the crash.
            phase.notes["outbox_rows_at_crash"] = outbox_rows(cached)
            phase.notes["versions_behind_at_crash"] = versions_behind(cached)
            # The crashed writes are in Postgres, but the cache does not show them yet.
            unseen = [k.name for k in kinds
                      if keys[k.name] not in k.in_api(cached.test_client(), ctx[k.name],
                                                      USERS[0])]
            phase.notes["kinds_stale_at_crash"] = unseen
            stale = stale_paths(cached, plain, paths)
            phase.notes["stale_paths_at_crash"] = len(stale)
            phase.notes["checked_within_s"] = round(time.monotonic() - crashed_at, 2)
            # Repaired = the relay applied and deleted every row: polled with the cheap
            # queries (a round of stale_paths takes over a second on a busy host, too coarse
            # for the bound), then every answer is checked once.
            while (outbox_rows(cached) or versions_behind(cached)) and (
                    time.monotonic() - crashed_at < bound + 10):
                time.sleep(0.05)
            repaired_after = time.monotonic() - crashed_at
            stale = stale_paths(cached, plain, paths)
            phase.notes["repaired_after_s"] = round(repaired_after, 2)
            phase.notes["stated_bound_s"] = bound
        for kind in kinds:
            assert keys[kind.name] in kind.in_db(cached, ctx[kind.name], USERS[0]), kind.name
        assert not stale, stale
        # The crash did leave the cache stale, on every read path a write changed, and only
        # the relay (nothing else applies the outbox here) repaired it.
        assert phase.notes["outbox_rows_at_crash"] >= len(kinds)
        assert phase.notes["stale_paths_at_crash"] > 0
        # Each write's own view shows it only after the repair; a like's view (engagement)
        # is not cached, its cache trace is the liker's ranked-feed version (``calc``).
        assert unseen == [k.name for k in kinds if k.name not in UNCACHED_VIEW], unseen
        behind = phase.notes["versions_behind_at_crash"]
        assert len(behind) >= len(kinds), behind  # one scope version per write, left behind
        if "like" in codes:
            assert f"u:{USERS[0]}|calc" in behind, behind
        assert outbox_rows(cached) == 0
        assert versions_behind(cached) == []
        for kind in kinds:
            assert keys[kind.name] in kind.in_api(cached.test_client(), ctx[kind.name],
                                                  USERS[0]), kind.name
        assert repaired_after <= bound + 1.0  # slack: the scheduler's start and tick
    finally:
        scheduler.terminate()
        scheduler.wait(10)


def race_one(cached, ctx, kind, user: int) -> str:
    """A reader's fill of ``kind``'s read is paused after its load while write 1 of ``kind``
    lands; returns ``"raced"``, or ``"no fill"`` if that read path never fills."""
    state = cached.extensions["hc"]
    original_fill = state.filler.fill
    loaded, release, done = threading.Event(), threading.Event(), threading.Event()
    reader_ids: list[int] = []

    def paused_fill(path, scope, keys, load, *args, **kwargs):
        if threading.get_ident() not in reader_ids or release.is_set():
            return original_fill(path, scope, keys, load, *args, **kwargs)

        def slow_load():
            data = load()  # read from Postgres under the old version
            loaded.set()
            release.wait(10)
            return data

        return original_fill(path, scope, keys, slow_load, *args, **kwargs)

    def reader() -> None:
        reader_ids.append(threading.get_ident())
        try:
            kind.in_api(cached.test_client(), ctx[kind.name], user)
        finally:
            done.set()

    kind.write(cached.test_client(), ctx[kind.name], user, 0)
    state.cache.redis.flushall()  # cold: the reader must fill
    state.filler.fill = paused_fill
    thread = threading.Thread(target=reader, daemon=True)
    try:
        thread.start()
        deadline = time.monotonic() + 10
        while not (loaded.wait(0.005) or done.is_set()) and time.monotonic() < deadline:
            pass
        assert loaded.is_set() or done.is_set(), f"{kind.name}: the reader hung"
        if not loaded.is_set():
            return "no fill"
        status, key = kind.write(cached.test_client(), ctx[kind.name], user, 1)
        assert status in (200, 201)
    finally:
        release.set()
        thread.join(10)
        state.filler.fill = original_fill
    assert not thread.is_alive()
    assert key in kind.in_api(cached.test_client(), ctx[kind.name], user), kind.name
    return "raced"


def test_paused_fill_cannot_overwrite_newer_write(apps, recorder):
    cached, plain, kinds, ctx = apps
    stale_before = counter_total(stats.STALE_FILLS)
    with recorder.phase("paused fills") as phase:
        for kind in kinds:
            before = counter_total(stats.STALE_FILLS)
            outcome = race_one(cached, ctx, kind, USERS[0])
            discarded = counter_total(stats.STALE_FILLS) - before
            phase.notes[kind.name] = f"{outcome}, {discarded:.0f} stale fills discarded"
        phase.notes["stale_fills_discarded"] = counter_total(stats.STALE_FILLS) - stale_before
    assert stale_paths(cached, plain, read_paths(cached, ctx)) == []
    # Every kind whose own view is cached had its fill paused while its write landed.
    assert [k.name for k in kinds if phase.notes[k.name].startswith("no fill")] == [
        k.name for k in kinds if k.name in UNCACHED_VIEW], phase.notes
    assert phase.notes["stale_fills_discarded"] >= 1


# Read paths that fall back to Postgres when another request holds the fill lease, instead
# of waiting for that fill (DESIGN rule 3: "the others wait briefly"): a stampede costs
# one Postgres read per losing request there.
KNOWN_STAMPEDE_GAPS: tuple[str, ...] = ()  # none left: every read path waits for the fill
# Read paths that are not cached at all (README, "Promises weakened"): no fill to stampede.
UNCACHED_PATHS = ("/community/posts/", "/api/posts/?ordering=chronological")


def is_uncached(path: str) -> bool:
    return path.startswith(UNCACHED_PATHS)


def is_known_gap(path: str) -> bool:
    return any(path.startswith(p) for p in KNOWN_STAMPEDE_GAPS)


def run_stampede(apps, recorder, wanted) -> list[str]:
    """200 requests (50 threads, the first 50 released together) per read path right after
    a FLUSHALL; returns the paths that cost more than 2 loads from Postgres per key."""
    cached, plain, kinds, ctx = apps
    state = cached.extensions["hc"]
    for kind in kinds:
        for user in USERS:
            kind.write(cached.test_client(), ctx[kind.name], user, 0)
    paths = [p for p in read_paths(cached, ctx) if wanted(p)]
    user = USERS[0]
    truth = snapshot(plain.test_client(), paths, user)
    original_fill = state.filler.fill
    loads: Counter[str] = Counter()
    lock = threading.Lock()

    def counting_fill(path, scope, keys, load, *args, **kwargs):
        def counted():
            with lock:
                loads[f"{path} {keys[0]}"] += 1
            return load()

        return original_fill(path, scope, keys, counted, *args, **kwargs)

    state.filler.fill = counting_fill
    over: list[str] = []
    try:
        for path in paths:
            snapshot(cached.test_client(), [path], user)  # hot
            state.cache.redis.flushall()  # just invalidated
            loads.clear()
            fallbacks = counter_total(stats.CACHE_EVENTS, "fallback")
            queries = counter_total(DB_QUERIES)
            errors = counter_total(stats.REDIS_ERRORS)
            barrier = threading.Barrier(50)

            def one(n: int, p=path, b=barrier) -> tuple[int, float, bool]:
                client = cached.test_client()
                if n < 50:
                    b.wait(10)
                start = time.perf_counter()
                r = client.get(p, headers=bearer(user))
                ok = r.status_code == 200 and normalized(r.get_json()) == truth[p][1]
                return r.status_code, (time.perf_counter() - start) * 1000, ok

            with recorder.phase(f"200 requests {path}") as phase, ThreadPoolExecutor(50) as ex:
                results = list(ex.map(one, range(200), timeout=60))
            for status, ms, _ in results:
                phase.add(ms, status)
            phase.notes["fills_per_key"] = dict(loads)
            phase.notes["fallbacks"] = counter_total(stats.CACHE_EVENTS, "fallback") - fallbacks
            phase.notes["sql_statements"] = counter_total(DB_QUERIES) - queries
            phase.notes["redis_errors"] = counter_total(stats.REDIS_ERRORS) - errors
            # A Redis error (a timeout) counts toward the breaker, and an open breaker
            # sends everyone to Postgres: the stampede would prove nothing.
            assert phase.notes["redis_errors"] == 0, (path, phase.notes)
            assert all(ok for _, _, ok in results), path
            # The flush made the key cold: a cached path must have filled (else the
            # stampede met a warm key, or no cache at all, and proved nothing).
            cached_path = not is_uncached(path)
            assert (sum(loads.values()) >= 1) == cached_path, (path, dict(loads))
            # A fallback is a load from Postgres as well.
            if max(loads.values(), default=0) > 2 or phase.notes["fallbacks"] > 2:
                over.append(f"{path}: {dict(loads)} fills, {phase.notes['fallbacks']} fallbacks")
    finally:
        state.filler.fill = original_fill
    return over


def test_stampede_on_invalidated_hot_key(stampede_apps, recorder):
    assert run_stampede(stampede_apps, recorder, lambda p: not is_known_gap(p)) == []
