"""Fault 1: no acknowledged write is lost while the cache Redis is killed (kill -9) and
restarted and Postgres is crash-restarted (``pg_ctl restart -m immediate``).

Writer threads make unique writes on every write endpoint the service has (mark-viewed,
like, reel view, activity create). Afterwards every acknowledged write is in Postgres and
visible through the API; every failed write got a 503 (with Retry-After) and left no
half-applied state (counters equal their rows, an event has its activity).
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict

import pytest

from tests.reliability.conftest import reliability_settings
from tests.reliability.workload import Outcome, kinds_for, timed

WRITERS = 6
PER_USER = 25  # unique writes per user and kind (reels keep the newest 50 per user)
PAUSE = 0.02  # seconds between one writer's writes


def wait_until(predicate, timeout: float = 10.0, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


@pytest.fixture
def fault_app(make_app, pg_database_url, faulty_redis, queue_redis):
    return make_app(reliability_settings(pg_database_url, faulty_redis.url,
                                         rq_redis_url=queue_redis.url))


def test_no_acknowledged_write_lost(fault_app, faulty_redis, pg_server, recorder):
    app = fault_app
    kinds = kinds_for(app)
    assert kinds, "no write endpoints to test"
    users = [1001 + n for n in range(WRITERS)]
    seed_client = app.test_client()
    ctx = {k.name: k.seed(app, seed_client, users, PER_USER) for k in kinds}
    outcomes: list[Outcome] = []
    lock = threading.Lock()
    stop = threading.Event()

    def writer(user: int) -> None:
        client = app.test_client()
        step = 0
        while not stop.is_set() and step < PER_USER * len(kinds):
            kind = kinds[step % len(kinds)]
            i = step // len(kinds)
            status, key, ms = timed(kind.write, client, ctx[kind.name], user, i)
            phase = recorder.current
            phase.add(ms, status)
            with lock:
                outcomes.append(Outcome(kind.name, user, key, status, ms))
            step += 1
            time.sleep(PAUSE)

    threads = [threading.Thread(target=writer, args=(u,), daemon=True) for u in users]
    with recorder.phase("baseline"):
        for t in threads:
            t.start()
        time.sleep(0.8)
    with recorder.phase("redis killed (kill -9)") as down:
        faulty_redis.kill9()
        time.sleep(1.5)
    with recorder.phase("redis restarted empty"):
        faulty_redis.start()
        time.sleep(1.0)
    with recorder.phase("postgres restart -m immediate") as pg_phase:
        started = time.monotonic()
        pg_server.restart_immediate()
        pg_phase.notes["restart_s"] = round(time.monotonic() - started, 2)
        time.sleep(0.3)
    with recorder.phase("recovered"):
        for t in threads:
            t.join(timeout=30)
        stop.set()
    assert not any(t.is_alive() for t in threads), "a writer hung"

    statuses = {o.status for o in outcomes}
    assert statuses <= {200, 201, 204, 503}, statuses
    # Rule 3: while only Redis is down, writes still commit to Postgres.
    assert set(down.statuses) <= {"200", "201", "204"}, down.statuses

    # Redis is back: once the breaker has closed, reads use the cache again.
    check = app.test_client()
    acked: dict[tuple[str, int], set] = defaultdict(set)
    for o in outcomes:
        if o.status in (200, 201, 204):
            acked[(o.kind, o.user)].add(o.key)
    for kind in kinds:
        for user in users:
            want = acked[(kind.name, user)]
            assert want <= kind.in_db(app, ctx[kind.name], user), (kind.name, user)
            assert wait_until(lambda k=kind, u=user, w=want:
                              w <= k.in_api(check, ctx[k.name], u), timeout=5), (kind.name, user)
        assert kind.invariants(app, ctx[kind.name]) == [], kind.name
    recorder.phases[0].notes["kinds"] = [k.name for k in kinds]
    recorder.phases[-1].notes["acknowledged"] = sum(len(v) for v in acked.values())
    recorder.phases[-1].notes["failed_503"] = sum(1 for o in outcomes if o.status == 503)
