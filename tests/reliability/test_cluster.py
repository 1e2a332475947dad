"""Scale-out: the cache on a 3-master Redis Cluster.

- the core's Lua scripts (apply, publish, set-max) and pipelines work on a cluster, with
  one pipeline spanning slots on different masters;
- every read path answers the same through the cache as from Postgres, on one Redis and
  on the cluster (a parametrized fixture), with no Redis error (a cross-slot command would
  raise CROSSSLOT and be counted) and with cache hits;
- every key of one user maps to one slot.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections import defaultdict

import pytest
import redis
from redis.cluster import key_slot

from cache import stats
from cache.client import Cache, CacheUnavailable, connect
from cache.fill import Filler, read_through
from cache.keys import Keyspace, Scope, user_tag
from cache.outbox import Applier
from cache.versioned import Change
from tests.reliability.workload import kinds_for, read_paths, snapshot
from tests.support import ROOT as PROJECT_ROOT
from tests.support.metrics import counter_total
from tests.support.reliability import reliability_settings

ROOT = PROJECT_ROOT
USERS = [2001, 2002, 2003]
PER_USER = 4


def test_core_scripts_and_pipelines_on_cluster(redis_cluster):
    client = connect(redis_cluster.url)
    cache = Cache(client, Keyspace("core:"))
    versions = {"u:1|t": 0}
    filler = Filler(cache, lambda row: versions.get(row, 0))
    applier = Applier(cache)
    scopes = [Scope(user_tag(n), "t") for n in range(1, 7)]
    keys = [cache.keys.key(s.tag, "h") for s in scopes]
    assert len({client.keyslot(k) for k in keys}) > 1
    assert len({client.get_node_from_key(k).port for k in keys}) > 1  # several masters

    def stage(pipe, temps, data):
        pipe.hset(next(iter(temps.values())), mapping=data)

    for scope, key in zip(scopes, keys, strict=True):
        filler.fill("t", scope, [key], lambda: {"a": "1"}, stage)
    # One apply pipeline across slots on different masters.
    applier.apply([Change(s, 1, []).op("HSET", k, "b", "2") for s, k in zip(scopes, keys,
                                                                              strict=True)])
    for key in keys:
        assert client.hgetall(key) == {b"a": b"1", b"b": b"2"}

    # A fill computed under an old version is discarded (the publish script's check).
    stale = {"seen": False}

    def slow_load():
        applier.apply([Change(scopes[0], 2, []).op("HSET", keys[0], "c", "3")])
        stale["seen"] = True
        return {"old": "x"}

    client.delete(keys[0])
    filler.fill("t", scopes[0], [keys[0]], slow_load, stage)
    assert stale["seen"] and client.exists(keys[0]) == 0

    # read_through on the cluster: miss -> fill -> hit; versions never roll back.
    def read(r):
        return r.hgetall(keys[1]) or None

    assert read_through(cache, "t", read, lambda: None, lambda: None) == {b"a": b"1",
                                                                          b"b": b"2"}
    client.delete(cache.keys.version(scopes[1]))
    versions[scopes[1].row_name] = 5
    assert filler.version("t", scopes[1]) == 5
    client.close()


def test_cluster_pipelines_rename_and_unroutable_calls(redis_cluster):
    client = connect(redis_cluster.url)
    cache = Cache(client, Keyspace("rn:"))
    key, temp = cache.keys.key("u:9", "z"), cache.keys.temp(cache.keys.key("u:9", "z"), "t")

    def stage_and_rename(r):
        pipe = r.pipeline(transaction=False)
        pipe.set(temp, "v")
        pipe.renamenx(temp, key)
        pipe.set(temp, "w")
        pipe.rename(temp, key)
        return pipe.execute()

    assert cache.run("t", stage_and_rename) == [True, True, True, True]
    assert client.get(key) == b"w"

    def unroutable(r):  # redis-py refuses MGET in a cluster pipeline
        pipe = r.pipeline(transaction=False)
        pipe.mget(key, temp)
        return pipe.execute()

    with pytest.raises(CacheUnavailable):
        cache.run("t", unroutable)  # a Postgres fallback, not a 500
    client.close()


@pytest.fixture(params=["single", "cluster"])
def backend_url(request, redis_url) -> str:
    if request.param == "single":
        return redis_url
    return request.getfixturevalue("redis_cluster").url


def test_read_paths_same_through_cache_as_postgres(make_app, database_url, redis_url,
                                                   backend_url, recorder):
    # Timeouts no starved host reaches: the test counts Redis errors and fallbacks (it is
    # about cross-slot commands, not slow Redis).
    cached = make_app(reliability_settings(database_url, backend_url, rq_redis_url=redis_url,
                                           redis_read_timeout=2.0, redis_connect_timeout=2.0))
    plain = make_app(reliability_settings(database_url, redis_url, cache_mode="off"))
    kinds = kinds_for(cached)
    client = cached.test_client()
    ctx = {k.name: k.seed(cached, client, USERS, PER_USER) for k in kinds}
    errors_before = counter_total(stats.REDIS_ERRORS)
    hits_before = counter_total(stats.CACHE_EVENTS, "hit")
    for user in USERS:
        for i in range(PER_USER):
            for kind in kinds:
                status, _ = kind.write(client, ctx[kind.name], user, i)
                assert status in (200, 201), (kind.name, status)
    paths = read_paths(cached, ctx)
    fallbacks = 0.0  # reads of the cached app answered from Postgres instead
    with recorder.phase(f"reads on {backend_url.split(':')[0]}") as phase:
        for user in USERS:
            truth = snapshot(plain.test_client(), paths, user)
            before = counter_total(stats.CACHE_EVENTS, "fallback")
            assert snapshot(client, paths, user) == truth  # first read: fills
            assert snapshot(client, paths, user) == truth  # second read: hits
            fallbacks += counter_total(stats.CACHE_EVENTS, "fallback") - before
        phase.notes["redis_errors"] = counter_total(stats.REDIS_ERRORS) - errors_before
        phase.notes["cache_hits"] = counter_total(stats.CACHE_EVENTS, "hit") - hits_before
        phase.notes["fallbacks"] = fallbacks
    assert phase.notes["redis_errors"] == 0
    assert phase.notes["cache_hits"] > 0
    # An answer from Postgres would equal the truth without testing the cache at all.
    assert fallbacks == 0

    if backend_url.startswith("redis+cluster"):
        assert_user_keys_in_one_slot(cached)


TAGGED = re.compile(r"^[^{]*\{([^}]+)\}:")


def assert_user_keys_in_one_slot(app) -> None:
    """Every key sits under a hash tag; the keys of one user all map to that user's slot."""
    state = app.extensions["hc"]
    prefix = state.settings.key_prefix
    keys: list[str] = []
    for node in state.cache.redis.get_primaries():
        plain = redis.Redis(host=node.host, port=node.port)
        keys += [k.decode() for k in plain.scan_iter(match=f"{prefix}*", count=1000)]
        plain.close()
    assert keys
    slots_by_user: dict[str, set[int]] = defaultdict(set)
    for key in keys:
        match = TAGGED.match(key)
        assert match, f"key without a hash tag: {key}"
        tag = match.group(1)
        if tag.startswith("u:"):
            slots_by_user[tag].add(key_slot(key.encode()))
        # A key naming a user outside its tag would live in another slot than the user's.
        assert not re.search(r"\{u:\d+\}", key[match.end():]), key
    for user in USERS:
        tag = user_tag(user)
        assert slots_by_user[tag] == {key_slot(f"{{{tag}}}".encode())}, (tag, slots_by_user)


# The read paths' own API test modules, run again with the cluster as the cache Redis.
READ_PATH_MODULES = (
    "tests/integration/group_feed/test_group_feed.py",
    "tests/integration/activity_feed/test_activity_feed.py",
    "tests/integration/community_feed/test_community_feed.py",
    "tests/integration/community_feed/test_post_entities.py",
    "tests/integration/ranked_feed/test_ranked_feed.py",
    "tests/integration/recent_reels/test_reels_api.py",
)


# Not rerun: tests whose requests are all refused by authentication or input validation
# (401 / 403 / 400, and 404 / 400 for a missing or hidden reel) before any Redis command, so
# they answer the same on any Redis. Every other test of those modules runs on the cluster.
# A name that no longer matches (a renamed test) deselects nothing: that test runs too.
REFUSED_BEFORE_THE_CACHE = {
    "tests/integration/group_feed/test_group_feed.py": (
        "test_feed_bad_query_is_400", "test_create_bad_body_is_400", "test_other_bad_input"),
    "tests/integration/activity_feed/test_activity_feed.py": (
        "test_event_needs_admin", "test_event_bad_input_is_400",
        "test_listing_bad_query_is_400", "test_listing_needs_a_token",
        "test_mark_read_bad_input_is_400", "test_generate_bad_input_is_400",
        "test_generate_needs_admin", "test_fan_out_bad_input_is_400"),
    "tests/integration/community_feed/test_community_feed.py": (
        "test_post_validation", "test_bad_cursor_and_args"),
    "tests/integration/recent_reels/test_reels_api.py": (
        "test_bad_view_duration_400", "test_view_body_errors_400", "test_no_token_401",
        "test_batch_envelope_errors_400", "test_bad_query_400", "test_like_errors"),
}


def test_read_path_modules_on_cluster(redis_cluster, server_urls):
    """``pytest <read-path modules>`` in a subprocess with TEST_REDIS_URL pointing at the
    cluster (and the queue on the single Redis), less ``REFUSED_BEFORE_THE_CACHE``. Set
    RELIABILITY_CLUSTER_MODULES to a comma list of module paths to choose others, or to
    "none" to skip."""
    chosen = os.environ.get("RELIABILITY_CLUSTER_MODULES", "")
    if chosen == "none":
        pytest.skip("RELIABILITY_CLUSTER_MODULES=none")
    modules = [m for m in (chosen.split(",") if chosen else READ_PATH_MODULES)
               if (ROOT / m).exists()]
    deselect = [f"--deselect={m}::{name}" for m in modules
                for name in REFUSED_BEFORE_THE_CACHE.get(m, ())]
    db_url, single_redis = server_urls
    env = {**os.environ, "TEST_DATABASE_URL": db_url, "TEST_REDIS_URL": redis_cluster.url,
           "TEST_RQ_REDIS_URL": single_redis}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:logging",
         "--tb=line", "-W", "ignore::pytest.PytestUnraisableExceptionWarning", *deselect,
         *modules],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    summary = [line for line in result.stdout.splitlines()
               if " passed" in line or " failed" in line or line.startswith(("FAILED", "E "))]
    print("\n[cluster] " + "\n          ".join(summary[-20:]))
    assert result.returncode == 0, "\n".join(summary[-20:])
