"""Fault 1: no acknowledged write is lost while the cache Redis is killed (kill -9) and
restarted and Postgres is crash-restarted (``pg_ctl restart -m immediate``).

Writer threads make unique writes on every write endpoint the service has (mark-viewed,
like, reel view, activity create) until the test stops them, so every fault meets writes
however fast the machine is; each phase ends once it has seen the traffic it needs (a
condition, not a sleep) and asserts that traffic. Afterwards every acknowledged write is
in Postgres and visible through the API; every failed write got a 503 (with Retry-After)
and left no half-applied state (counters equal their rows, an event has its activity).
"""

from __future__ import annotations

import time
from collections import defaultdict

import pytest

from tests.reliability.workload import Outcome, Writers, kinds_for
from tests.support.reliability import reliability_settings

WRITERS = 6
USERS_PER_WRITER = 4  # a writer moves to its next user after PER_USER writes of each kind
PER_USER = 25  # unique writes per user and kind (reels keep the newest 50 per user)
PAUSE = 0.01  # seconds between one writer's writes
WINDOW_WRITES = 20  # writes each fault window must see begin (and finish)
PHASE_TIMEOUT = 20.0  # a phase that has not seen its traffic by then fails
OK = {200, 201, 204}


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


def acked(outcomes: list[Outcome]) -> list[Outcome]:
    return [o for o in outcomes if o.status in OK]


def test_no_acknowledged_write_lost(fault_app, faulty_redis, pg_server, recorder):
    app = fault_app
    breaker = app.extensions["hc"].cache.breaker
    kinds = kinds_for(app)
    assert kinds, "no write endpoints to test"
    users = [1001 + n for n in range(WRITERS * USERS_PER_WRITER)]
    seed_client = app.test_client()
    ctx = {k.name: k.seed(app, seed_client, users, PER_USER) for k in kinds}
    writers = Writers(app, kinds, ctx, users, threads=WRITERS, per_user=PER_USER,
                      pause=PAUSE, phase_of=lambda: recorder.current)

    def finished_since(t: float, ok_only: bool = False) -> int:
        found = writers.between(t)
        return len(acked(found) if ok_only else found)

    try:
        with recorder.phase("baseline"):
            began = time.monotonic()
            writers.start()
            assert writers.wait(lambda: finished_since(began, True) >= WINDOW_WRITES,
                                PHASE_TIMEOUT), "writers never got going"

        with recorder.phase("redis killed (kill -9)") as down:
            faulty_redis.kill9()
            killed = time.monotonic()
            opened: list[float] = []

            def breaker_open_and_traffic() -> bool:
                if not opened and breaker.state == "open":
                    opened.append(time.monotonic())
                return (bool(opened) and finished_since(opened[0]) >= WINDOW_WRITES
                        and time.monotonic() - opened[0] >= 2 * breaker.cooldown)

            # Writes first meet a dead Redis (their applies fail and open the breaker),
            # then keep committing while the breaker sends them past Redis, past at least
            # one cooldown (a half-open probe that finds Redis still dead).
            assert writers.wait(breaker_open_and_traffic, PHASE_TIMEOUT), (
                breaker.state, finished_since(killed))
            restarted = time.monotonic()

        with recorder.phase("redis restarted empty") as back:
            faulty_redis.start()
            assert writers.wait(lambda: breaker.state == "closed"
                                and finished_since(restarted, True) >= WINDOW_WRITES,
                                PHASE_TIMEOUT), (breaker.state, finished_since(restarted))
            back.notes["breaker_closed_after_s"] = round(time.monotonic() - restarted, 2)

        with recorder.phase("postgres restart -m immediate") as pg_phase:
            pg_began = time.monotonic()
            pg_server.restart_immediate()
            pg_ended = time.monotonic()
            pg_phase.notes["restart_s"] = round(pg_ended - pg_began, 2)

        with recorder.phase("recovered") as recovered:
            # The service is back once writes begun after the restart are acknowledged.
            assert writers.wait(lambda: finished_since(pg_ended, True) >= WINDOW_WRITES,
                                PHASE_TIMEOUT), writers.between(pg_ended)[-5:]
    finally:
        writers.stop()
    assert writers.exhausted == 0, "writers ran out of users: raise USERS_PER_WRITER"
    outcomes = writers.outcomes

    # The faults met traffic: writes began inside every fault window and finished.
    in_down = writers.between(killed, restarted)
    in_back = writers.between(restarted, pg_began)
    in_pg = writers.between(pg_began, pg_ended)
    down.notes.update(writes_started=len(in_down),
                      after_breaker_open=len(writers.between(opened[0], restarted)))
    back.notes["writes_started"] = len(in_back)
    pg_phase.notes.update(
        writes_started=len(in_pg), answered_503=sum(o.status == 503 for o in in_pg),
        committed=len(acked(in_pg)))
    recovered.notes.update(
        acknowledged=len(acked(outcomes)), failed_503=sum(o.status == 503 for o in outcomes))
    assert len(in_down) >= WINDOW_WRITES, len(in_down)
    assert len(in_pg) >= WINDOW_WRITES, (
        f"only {len(in_pg)} writes began during the {pg_phase.notes['restart_s']} s restart")

    statuses = {o.status for o in outcomes}
    assert statuses <= OK | {503}, statuses
    # Rule 3: while only Redis is down (or just back), writes still commit to Postgres.
    before_pg = [o for o in outcomes if o.started + o.ms / 1000 < pg_began]
    assert {o.status for o in before_pg} <= OK, down.statuses
    # Postgres crashed under the writes: some got 503, each with Retry-After; the rest of
    # the window's writes committed.
    assert pg_phase.notes["answered_503"] > 0, pg_phase.statuses
    assert {o.status for o in in_pg} <= OK | {503}
    failed = [o for o in outcomes if o.status == 503]
    assert all(o.retry_after for o in failed), [o for o in failed if not o.retry_after][:3]
    # Only a write still in flight when Postgres went down may fail.
    assert all(o.started + o.ms / 1000 >= pg_began for o in failed), "a 503 before the crash"

    # Redis is back: once the breaker has closed, reads use the cache again.
    check = app.test_client()
    want: dict[tuple[str, int], set] = defaultdict(set)
    for o in acked(outcomes):
        want[(o.kind, o.user)].add(o.key)
    for (name, user), keys in want.items():
        kind = next(k for k in kinds if k.name == name)
        assert keys <= kind.in_db(app, ctx[name], user), (name, user)
        assert wait_until(lambda k=kind, u=user, w=keys: w <= k.in_api(check, ctx[k.name], u),
                          timeout=5), (name, user)
    for kind in kinds:
        assert kind.invariants(app, ctx[kind.name]) == [], kind.name
    recorder.phases[0].notes["kinds"] = [k.name for k in kinds]
