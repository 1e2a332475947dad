"""The cache core's mechanisms against real Redis and Postgres: versioned apply, fills that
cannot go stale, single flight, versions that survive a Redis flush, the outbox relay."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import text

from cache.client import NO_VALUE, CacheUnavailable
from cache.fill import LeaseHeld, read_through
from cache.keys import Scope
from cache.outbox import relay_outbox
from storage import cache_state
from tests.support.crash import crash_after_commit

SCOPE = Scope("u:1", "test")


def key(state) -> str:
    return state.cache.keys.key("u:1", "test")


def write(state, field: str, value: str) -> int:
    """A 'write': bumps the scope and sets one hash field in Redis, as a read path would."""
    with state.uow() as uow:
        change = uow.change(SCOPE).op("HSET", key(state), field, value)
        uow.commit()
    return change.version


def load_facts(state) -> dict[str, str]:
    """Stand-in for a Postgres query: the facts are the ops committed so far."""
    with state.db.session() as s:
        version = cache_state.get_version(s, SCOPE.row_name)
    return {"v": str(version)}


def stage_hash(pipe, temps, data) -> None:
    pipe.hset(next(iter(temps.values())), mapping=data)


def redis_hash(state) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in state.cache.redis.hgetall(key(state)).items()}


def test_apply_skips_missing_keys_and_sets_version(state):
    version = write(state, "a", "1")
    assert version == 1
    assert state.cache.redis.exists(key(state)) == 0  # never creates partial state
    assert int(state.cache.redis.get(state.cache.keys.version(SCOPE))) == 1


def test_fill_then_apply(state):
    state.filler.fill("test", SCOPE, [key(state)], lambda: {"base": "x"}, stage_hash)
    assert redis_hash(state) == {"base": "x"}
    write(state, "a", "1")
    assert redis_hash(state) == {"base": "x", "a": "1"}


def test_applied_change_leaves_its_row_to_the_relay_which_clears_it(state):
    state.filler.fill("test", SCOPE, [key(state)], lambda: {"base": "x"}, stage_hash)
    write(state, "a", "1")
    assert redis_hash(state) == {"base": "x", "a": "1"}  # applied by the request itself
    with state.db.session() as s:
        assert cache_state.outbox_size(s) == 1  # nothing marked after the commit
    # The relay applies it again (a no-op: the copy is at its version) and deletes it.
    assert relay_outbox(state.db, state.applier, min_age=0) == 0
    assert redis_hash(state) == {"base": "x", "a": "1"}
    with state.db.session() as s:
        assert cache_state.outbox_size(s) == 0
        # The relay's delete commits with synchronous_commit off for its own transaction
        # only (SET LOCAL): the session's next transaction is durable again.
        assert s.execute(text("SHOW synchronous_commit")).scalar_one() == "on"


def test_relay_leaves_rows_younger_than_min_age(state):
    write(state, "a", "1")
    assert relay_outbox(state.db, state.applier, min_age=60) == 0
    with state.db.session() as s:
        assert cache_state.outbox_size(s) == 1


def test_lost_change_invalidates(state):
    state.filler.fill("test", SCOPE, [key(state)], lambda: {"base": "x"}, stage_hash)
    # A change commits in Postgres but never reaches Redis (crash between commit and apply).
    with crash_after_commit(state), pytest.raises(SystemExit), state.uow() as uow:
        uow.change(SCOPE).op("HSET", key(state), "lost", "1")
        uow.commit()
    assert redis_hash(state) == {"base": "x"}  # stale until the next change or the relay
    write(state, "b", "2")  # version gap: the scope's keys are dropped, not patched
    assert state.cache.redis.exists(key(state)) == 0


def test_relay_applies_leftovers(state):
    state.filler.fill("test", SCOPE, [key(state)], lambda: {"base": "x"}, stage_hash)
    with crash_after_commit(state), pytest.raises(SystemExit), state.uow() as uow:
        uow.change(SCOPE).op("HSET", key(state), "a", "1")
        uow.commit()
    assert relay_outbox(state.db, state.applier, min_age=0) == 1
    assert redis_hash(state) == {"base": "x", "a": "1"}
    assert relay_outbox(state.db, state.applier, min_age=0) == 0
    with state.db.session() as s:
        assert cache_state.outbox_size(s) == 0


def test_replayed_change_is_noop(state):
    state.filler.fill("test", SCOPE, [key(state)], lambda: {"base": "x"}, stage_hash)
    write(state, "a", "1")
    write(state, "a", "2")
    # Replaying version 1 (a relay racing the request) must not roll "a" back.
    from cache.versioned import Change

    old = Change(SCOPE, 1, [key(state)]).op("HSET", key(state), "a", "1")
    state.applier.apply([old], by="relay")
    assert redis_hash(state)["a"] == "2"


def test_stalled_filler_cannot_overwrite_newer_write(state):
    """A filler loads, stalls, a write lands; the stale fill is discarded."""
    loaded = threading.Event()
    release = threading.Event()

    def slow_load():
        data = {"snapshot": "old"}
        loaded.set()
        release.wait(5)
        return data

    result = {}
    filler = threading.Thread(
        target=lambda: result.update(
            data=state.filler.fill("test", SCOPE, [key(state)], slow_load, stage_hash)
        )
    )
    filler.start()
    assert loaded.wait(5)
    write(state, "a", "new")  # commits and applies while the filler holds old data
    release.set()
    filler.join(5)
    assert result["data"] == {"snapshot": "old"}  # the filler still answered its caller
    assert state.cache.redis.exists(key(state)) == 0  # but did not publish stale state
    # The next fill sees the write.
    state.filler.fill("test", SCOPE, [key(state)], lambda: load_facts(state), stage_hash)
    assert redis_hash(state) == {"v": "1"}


def test_version_survives_redis_flush(state):
    for i in range(3):
        write(state, "a", str(i))
    for k in state.cache.redis.scan_iter(match=state.cache.keys.pattern()):
        state.cache.redis.delete(k)  # Redis lost everything (restart without persistence)
    assert state.filler.version("test", SCOPE) == 3  # reloaded from Postgres, not 0 or 1
    assert int(state.cache.redis.get(state.cache.keys.version(SCOPE))) == 3


def test_single_flight_one_load_for_many_misses(state):
    loads = []
    barrier = threading.Barrier(20)
    missed: set[int] = set()  # readers that found no key
    all_missed = threading.Condition()

    def load():
        loads.append(1)
        # Hold the lease until every reader has missed (not for a fixed time: a slow
        # machine could start the others after the fill landed, and they would just hit).
        with all_missed:
            all_missed.wait_for(lambda: len(missed) == 20, timeout=0.5)
        return {"v": "x"}

    def read(r):
        data = r.hgetall(key(state))
        if not data:
            with all_missed:
                missed.add(threading.get_ident())
                all_missed.notify_all()
        return {k.decode(): v.decode() for k, v in data.items()} if data else NO_VALUE

    def fill():
        return state.filler.fill("test", SCOPE, [key(state)], load, stage_hash)

    answers = []

    def reader():
        barrier.wait()
        answers.append(read_through(state.cache, "test", read, fill, lambda: load()))

    threads = [threading.Thread(target=reader) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert not any(t.is_alive() for t in threads)
    assert len(missed) == 20  # every reader missed while the one load was under way
    assert answers == [{"v": "x"}] * 20
    assert len(loads) == 1


def test_lease_held_raises(state):
    state.cache.redis.set(state.cache.keys.lease(key(state)), "someone-else")
    with pytest.raises(LeaseHeld):
        state.filler.fill("test", SCOPE, [key(state)], lambda: {}, stage_hash)


def test_redis_down_reads_fall_back_and_writes_commit(app, settings):
    from service.bootstrap import bootstrap

    dead = bootstrap(settings.replace(redis_url="redis://127.0.0.1:1/0"))
    try:
        assert read_through(dead.cache, "test", lambda r: r.get("x"), lambda: "fill",
                            lambda: "db") == "db"
        with dead.uow() as uow:
            uow.change(SCOPE).op("HSET", "k", "a", "1")
            uow.commit()  # acknowledged: Postgres has it, the outbox keeps the change
        with dead.db.session() as s:
            assert cache_state.get_version(s, SCOPE.row_name) == 1
            assert cache_state.outbox_size(s) == 1
        with pytest.raises(CacheUnavailable):
            dead.cache.run("test", lambda r: r.ping())
    finally:
        dead.close()


def test_cache_mode_off_never_touches_redis(settings):
    from service.bootstrap import bootstrap

    off = bootstrap(settings.replace(cache_mode="off"))
    try:
        assert read_through(off.cache, "test", lambda r: 1 / 0, lambda: 1 / 0,
                            lambda: "db") == "db"
    finally:
        off.close()


def test_scripts_reload_after_redis_lost_its_script_cache(state):
    state.filler.fill("test", SCOPE, [key(state)], lambda: {"base": "x"}, stage_hash)
    state.cache.redis.script_flush()  # as after a Redis restart
    write(state, "a", "1")  # EVALSHA -> NOSCRIPT -> load and retry, once
    assert redis_hash(state) == {"base": "x", "a": "1"}
    state.cache.redis.script_flush()
    state.cache.redis.delete(key(state))
    state.filler.fill("test", SCOPE, [key(state)], lambda: {"base": "y"}, stage_hash)
    assert redis_hash(state) == {"base": "y"}


def test_fill_costs_two_round_trips(state, monkeypatch):
    """Lease + version copy in one pipeline, then stage + publish in one."""
    state.filler.version("test", SCOPE)  # the version copy exists (the common case)
    calls = []
    real_run = state.cache.run
    monkeypatch.setattr(
        state.cache, "run", lambda path, fn: calls.append(path) or real_run(path, fn)
    )
    state.filler.fill("test", SCOPE, [key(state)], lambda: {"v": "1"}, stage_hash)
    assert len(calls) == 2


def test_fill_after_a_miss_does_not_reload_a_key_that_landed(state):
    state.filler.fill("test", SCOPE, [key(state)], lambda: {"first": "1"}, stage_hash)
    loads = []
    with pytest.raises(LeaseHeld):  # the key is there now: read it, don't load again
        state.filler.fill("test", SCOPE, [key(state)], lambda: loads.append(1) or {},
                          stage_hash, only_if_missing=True)
    assert loads == []
    assert state.cache.redis.exists(state.cache.keys.lease(key(state))) == 0  # released
    # A forced refresh still replaces it.
    state.filler.fill("test", SCOPE, [key(state)], lambda: {"second": "2"}, stage_hash)
    assert redis_hash(state) == {"second": "2"}
