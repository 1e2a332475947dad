"""The group feed's Redis layout: key formats, the bitmap arithmetic, round trips per
request, bytes per (user, group), O(1) mark-all, and recovery after an outage."""

from __future__ import annotations

import signal
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from threading import Barrier, Lock

import pytest
from redis.connection import AbstractConnection

from cache import group_feed as gf_cache
from cache import stats
from cache.group_feed import ReadState, bitmap, unread
from cache.keys import Keyspace
from cache.keyspace_admin import clear_keyspace
from cache.versioned import Change
from tests.support.group_feed import (  # noqa: F401 - fixtures
    COOLDOWN,
    add_member,
    chaos_app,
    feed,
    make_group,
    mark,
    mark_all,
    own_redis,
    pg_unread,
    pg_viewed,
    post_item,
    remove_member,
    viewed_map,
)
from tests.support.group_feed import unread as api_unread

USER = 7


def test_key_formats_are_pinned():
    keys = Keyspace("hc:")
    assert gf_cache.key(keys, 42, 7) == "hc:{u:42}:rs:7"
    assert gf_cache.live_key(keys, 7) == "hc:{g:7}:live"
    assert gf_cache.groups_key(keys, 42) == "hc:{u:42}:groups"
    assert gf_cache.scope(42, 7).row_name == "u:42|rs:7"
    assert gf_cache.live_scope(7).row_name == "g:7|live"
    assert keys.version(gf_cache.scope(42, 7)) == "hc:{u:42}:v:rs:7"


def test_bitmap_matches_setbit_offsets(state):
    r, k = state.cache.redis, state.cache.keys.key("u:1", "bits")
    for p in (1, 7, 8, 9, 100):
        r.setbit(k, p, 1)
    assert r.get(k) == bitmap([1, 7, 8, 9, 100])
    r.set(k, ReadState(0, b"").to_raw())
    r.setbit(k, gf_cache.OFFSET + 9, 1)
    assert ReadState.from_raw(r.get(k)) == ReadState(0, bitmap([9]))


def test_unread_arithmetic():
    live = bitmap(range(1, 21))
    assert unread(live, ReadState(0, b"")) == 20
    assert unread(live, ReadState.from_positions([1, 5, 30])) == 18
    assert unread(live, ReadState(10, b"")) == 10
    assert unread(live, ReadState(10, bitmap([11, 12]))) == 8
    assert unread(live, ReadState(500, b"")) == 0
    assert unread(b"", ReadState(3, bitmap([4]))) == 0
    assert unread(bitmap([3, 9]), ReadState.from_raw(b"")) == 2
    state = ReadState(10, bitmap([12]))
    assert [state.viewed(p) for p in (1, 10, 11, 12, 13)] == [True, True, False, True, False]


def test_mark_all_is_constant_size_in_redis():
    keys = Keyspace("hc:")
    change = Change(gf_cache.scope(1, 2), 1, [])
    gf_cache.on_all_viewed(change, keys, 1, 2, 2**31 - 1)
    assert len(change.ops) == 32 and change.keys == [gf_cache.key(keys, 1, 2)]
    with pytest.raises(ValueError):
        gf_cache.on_all_viewed(change, keys, 1, 2, 2**32)


def _fill_group(state, group_id: int, items: int, viewed_every: int) -> None:
    """Bulk data: ``items`` items, USER viewed every ``viewed_every``-th of them."""
    from sqlalchemy import text

    with state.db.session() as s:
        s.execute(text(
            "INSERT INTO feed_items (group_id, position, author_id, title, content_type)"
            " SELECT :g, p, 1, 'item ' || p, 'text' FROM generate_series(1, :n) p"
        ), {"g": group_id, "n": items})
        s.execute(text("UPDATE groups SET last_position = :n WHERE id = :g"),
                  {"g": group_id, "n": items})
        s.execute(text(
            "INSERT INTO feed_item_views (item_id, user_id, group_id, position)"
            " SELECT id, :u, group_id, position FROM feed_items"
            " WHERE group_id = :g AND position % :k = 0"
        ), {"g": group_id, "u": USER, "k": viewed_every})
        s.commit()


class RoundTrips:
    """Counts Redis round trips: one ``send_packed_command`` per command or pipeline."""

    def __init__(self, monkeypatch):
        self.count = 0
        original = AbstractConnection.send_packed_command

        def counting(conn, *args, **kwargs):
            self.count += 1
            return original(conn, *args, **kwargs)

        monkeypatch.setattr(AbstractConnection, "send_packed_command", counting)

    def during(self, fn) -> int:
        before = self.count
        fn()
        return self.count - before


def test_round_trips_and_bytes_at_1000_items(client, auth, admin_headers, state, monkeypatch,
                                             capsys):
    group = make_group(client, admin_headers, members=(USER,))
    _fill_group(state, group, items=1000, viewed_every=10)  # 10% viewed
    headers = auth(USER)
    trips = RoundTrips(monkeypatch)
    cold = trips.during(lambda: feed(client, headers, group))
    page = trips.during(lambda: feed(client, headers, group))
    page_200 = trips.during(lambda: feed(client, headers, group, limit=200))
    trips.during(lambda: api_unread(client, headers, group))  # fills the live bitmap
    one_group = trips.during(lambda: api_unread(client, headers, group))
    all_groups = trips.during(lambda: api_unread(client, headers))
    # A page: one pipeline of the group's list with its entities and the caller's
    # membership with their read state (1). 200 items run past the cached list
    # (ITEMS_LIST_SIZE): the ids come from Postgres, the bits in one round trip after the
    # list's.
    assert (page, page_200, one_group, all_groups) == (1, 2, 1, 2)
    assert api_unread(client, headers, group) == 900
    shown = viewed_map(client, headers, group)
    assert len(shown) == 200
    assert shown == {i: v for i, v in pg_viewed(state, USER, group).items() if i in shown}
    # A read state over RS_INLINE_BYTES is asked for the page's positions: 2 round trips,
    # the same page.
    monkeypatch.setattr(gf_cache, "RS_INLINE_BYTES", 16)
    assert trips.during(lambda: feed(client, headers, group)) == 2
    assert viewed_map(client, headers, group) == shown
    monkeypatch.undo()

    r, keys = state.cache.redis, state.cache.keys
    rs_key = gf_cache.key(keys, USER, group)
    rs_bytes = r.memory_usage(rs_key)
    version_bytes = r.memory_usage(keys.version(gf_cache.scope(USER, group)))
    live_bytes = r.memory_usage(gf_cache.live_key(keys, group))
    assert r.strlen(rs_key) == 4 + 1000 // 8 + 1
    assert rs_bytes + version_bytes < 400
    mark_all(client, headers, group)
    after_all = r.memory_usage(rs_key)
    with capsys.disabled():
        print(f"\n[group feed] round trips: cold page {cold}, page (hit) {page}, "
              f"unread one group {one_group}, unread all groups {all_groups}; "
              f"bytes per (user, group) at 1000 items, 10% viewed: rs {rs_bytes} + version "
              f"copy {version_bytes}; after mark-all: rs {after_all}; "
              f"per group: live bitmap {live_bytes}")


def test_all_unread_is_one_round_trip_and_follows_membership(client, auth, admin_headers,
                                                            state, monkeypatch):
    """All groups' counts: one round trip once this process has answered the user (the
    groups set read beside the states of the groups it last saw), and the right groups
    after the user joins or leaves one (the guess is only which keys to read)."""
    headers = auth(USER)
    first = make_group(client, admin_headers, members=(USER,), name="first")
    second = make_group(client, admin_headers, name="second")
    post_item(client, headers, first, "a")
    post_item(client, admin_headers, second, "b")  # in a group USER is not in (yet)
    trips = RoundTrips(monkeypatch)

    def counts() -> dict[int, int]:
        return {int(g): n for g, n in api_unread(client, headers)["groups"].items()}

    assert counts() == pg_unread(state, USER) == {first: 1}  # the first answer (fills)
    assert trips.during(counts) == 1
    add_member(client, admin_headers, second, USER)
    assert counts() == pg_unread(state, USER) == {first: 1, second: 1}
    assert trips.during(counts) == 1
    remove_member(client, admin_headers, first, USER)
    assert counts() == pg_unread(state, USER) == {second: 1}  # the set is filled again
    assert trips.during(counts) == 1
    # Another process answered last: this one's guess names a group the user left.
    gf_cache._remember_groups(state.cache.keys, USER, (first, second), gf_cache._NO_GUESS)
    assert trips.during(counts) == 2
    assert counts() == {second: 1}
    gf_cache._GUESSED_GROUPS.clear()  # a process that never answered the user
    assert trips.during(counts) == 2
    assert trips.during(counts) == 1


def test_cold_cache_rebuilds_from_postgres(client, auth, admin_headers, state):
    group = make_group(client, admin_headers, members=(USER,))
    items = [post_item(client, auth(USER), group, f"i{n}") for n in range(4)]
    mark(client, auth(USER), items[2]["id"])
    before = viewed_map(client, auth(USER), group), api_unread(client, auth(USER), group)
    assert clear_keyspace(state.cache) > 0
    after = viewed_map(client, auth(USER), group), api_unread(client, auth(USER), group)
    assert before == after == (pg_viewed(state, USER, group), 3)


def test_first_read_after_an_outage_sees_writes_made_during_it(chaos_app, own_redis):  # noqa: F811
    """A write whose apply failed (Redis frozen) is in the very first read after Redis
    comes back: the breaker's probe must not answer from the stale key."""
    client = chaos_app.test_client()
    app_state = chaos_app.extensions["hc"]
    from tests.support.auth import bearer

    admin, headers = bearer(1, admin=True), bearer(USER)
    group = make_group(client, admin, members=(USER,))
    item = post_item(client, headers, group)
    mark(client, headers, item["id"])
    assert viewed_map(client, headers, group) == {item["id"]: True}  # cached
    own_redis.proc.send_signal(signal.SIGSTOP)
    try:
        assert mark(client, headers, item["id"], viewed=False).status_code == 200
        assert viewed_map(client, headers, group) == {item["id"]: False}  # from Postgres
    finally:
        own_redis.proc.send_signal(signal.SIGCONT)
    time.sleep(COOLDOWN)
    assert viewed_map(client, headers, group) == {item["id"]: False}
    assert app_state.cache.breaker.state == "closed"
    assert viewed_map(client, headers, group) == {item["id"]: False}


THREADS = 25


def test_stampede_on_a_cold_page_costs_one_load_per_key(app, auth, admin_headers, state,
                                                         monkeypatch):
    group = make_group(app.test_client(), admin_headers, members=(USER,))
    items = [post_item(app.test_client(), auth(USER), group, f"i{n}") for n in range(5)]
    mark(app.test_client(), auth(USER), items[1]["id"])
    truth = pg_viewed(state, USER, group)
    clear_keyspace(state.cache)
    loads: Counter[str] = Counter()
    lock = Lock()
    original = state.filler.fill

    def counting_fill(path, scope, keys, load, *args, **kwargs):
        def counted():
            with lock:
                loads[keys[0]] += 1
            return load()

        return original(path, scope, keys, counted, *args, **kwargs)

    monkeypatch.setattr(state.filler, "fill", counting_fill)
    barrier = Barrier(THREADS)

    def one(_):
        client = app.test_client()
        barrier.wait(10)
        return viewed_map(client, auth(USER), group)

    before = _fallbacks()
    with ThreadPoolExecutor(THREADS) as ex:
        results = list(ex.map(one, range(THREADS)))
    assert all(r == truth for r in results)
    # One load per key; a second only when a reader missed just before the first fill
    # published and took the freed lease after it.
    assert loads and max(loads.values()) <= 2, loads
    assert _fallbacks() - before <= 2  # the others waited for the fill, not read Postgres


def _fallbacks() -> float:
    return sum(s.value for metric in stats.CACHE_EVENTS.collect() for s in metric.samples
               if s.labels.get("outcome") == "fallback" and s.name.endswith("_total"))
