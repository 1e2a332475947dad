"""The activity feed's cached answers always equal what Postgres says: a hypothesis state
machine of creates, mark-read, mark-all, retention cleanup, archive, Redis flushes and
writes during a Redis outage; and concurrent mark-read racing a mark-all."""

from __future__ import annotations

import threading
from collections import Counter

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import text

from cache import activity_feed as feed_cache
from cache.keyspace_admin import clear_keyspace
from cache.outbox import relay_outbox
from service import activity_feed_ops as ops
from storage.activity_feed import ACTIVITY_TYPES
from tests.support.activity_feed_truth import (
    api_summary,
    ids_of,
    make_item,
    strip_display,
    truth_items,
    truth_summary,
)

FEED = "/api/events/activity-feed/"
USERS = (41, 42, 43)
users = st.sampled_from(USERS)


def test_cached_feed_always_equals_postgres(client, state, auth, admin_headers):
    class FeedMachine(RuleBasedStateMachine):
        @initialize()
        def reset(self) -> None:
            with state.db.session() as s:
                s.execute(text("DELETE FROM activities; DELETE FROM activities_archive;"
                               " DELETE FROM events"))
                s.commit()
            clear_keyspace(state.cache)
            self.serial = 0

        @rule(user=users, activity_type=st.sampled_from(ACTIVITY_TYPES),
              days_ago=st.sampled_from([0, 1, 20, 45, 100, 200, 400]))
        def create(self, user, activity_type, days_ago) -> None:
            self.serial += 1
            make_item(state, user, activity_type, days_ago, title=f"h{self.serial}")

        @rule(user=users)
        def ingest_event(self, user) -> None:
            r = client.post("/api/events/", headers=admin_headers,
                            json={"user_id": user, "event_type": "fast_join", "title": "j"})
            assert r.status_code == 201

        @rule(user=users, picks=st.lists(st.integers(0, 60), max_size=6))
        def mark_some(self, user, picks) -> None:
            every = [i for u in USERS for i in ids_of(state, u)]  # incl. other users' ids
            ids = [every[p % len(every)] for p in picks] if every else []
            ids.append(2**62)  # unknown
            unread_mine = {r["id"] for r in truth_items(state, user, unread_only=True)}
            r = client.post(FEED + "mark-read/", json={"activity_ids": ids}, headers=auth(user))
            assert r.get_json()["updated_count"] == len(unread_mine & set(ids))

        @rule(user=users)
        def mark_all(self, user) -> None:
            unread = truth_summary(state, user)["unread_count"]
            r = client.post(FEED + "mark-read/", json={"mark_all": True}, headers=auth(user))
            assert r.get_json()["updated_count"] == unread

        @rule(older_than=st.sampled_from([None, None, 30, 150]))
        def cleanup(self, older_than) -> None:
            ops.cleanup(state, older_than_days=older_than)

        @rule()
        def archive(self) -> None:
            ops.archive(state, 300)

        @rule()
        def flush_redis(self) -> None:
            clear_keyspace(state.cache)

        @rule(user=users)
        def write_during_outage(self, user) -> None:
            state.cache.enabled = False  # the write commits; its cache change waits
            try:
                make_item(state, user, "milestone", 0, title="outage")
                ops.mark_read(state, user, None)
            finally:
                state.cache.enabled = True
            relay_outbox(state.db, state.applier, min_age=0)

        def check(self, user: int, view: str) -> None:
            h = auth(user)
            if view == "summary":
                assert api_summary(client, h) == truth_summary(state, user)
            elif view == "all":
                page = client.get(FEED + "?page_size=10", headers=h).get_json()
                assert strip_display(page["results"]) == truth_items(state, user, limit=10)
                assert page["count"] == truth_summary(state, user)["total_items"]
            else:
                unread = client.get(FEED + "?is_read=false", headers=h).get_json()
                assert strip_display(unread["results"]) == \
                    truth_items(state, user, unread_only=True, limit=20)
                assert unread["count"] == truth_summary(state, user)["unread_count"]

        # A miss on one view refills them all, so reading every view after each step would
        # hide a stale key: steps read one view; the invariant inspects Redis directly.
        @rule(user=users, view=st.sampled_from(["summary", "all", "unread"]))
        def look(self, user, view) -> None:
            self.check(user, view)

        @invariant()
        def every_cached_key_equals_postgres(self) -> None:
            r, keys = state.cache.redis, state.cache.keys
            for user in USERS:
                raw = r.get(feed_cache.feed_key(keys, user))
                if raw is None:
                    continue
                truth = truth_summary(state, user)
                cached = feed_cache.Cached.decode(raw)
                counts = cached.counts
                assert (counts.total, counts.unread, counts.by_type) == (
                    truth["total_items"], truth["unread_count"], truth["activity_types"])
                compared["counts"] += 1
                items = [feed_cache.unpack_item(row) for row in cached.items]
                assert len(items) >= min(truth["total_items"], feed_cache.RECENT_COUNT)
                assert items == truth_items(state, user, limit=len(items))
                compared["items"] += 1
                if cached.unread is not None:
                    assert [feed_cache.unpack_item(row) for row in cached.unread] == \
                        truth_items(state, user, unread_only=True, limit=feed_cache.PAGE_CAP)
                    compared["unread_page"] += 1

    # A random run may never fill a key before its checks (the invariant then compares
    # nothing), or never write during an outage: this script does each once, then the
    # random runs follow.
    compared: Counter[str] = Counter()
    machine = FeedMachine()
    milestone, other = ACTIVITY_TYPES[0], ACTIVITY_TYPES[1]
    script = [
        lambda: machine.reset(),
        lambda: machine.create(41, milestone, 0), lambda: machine.create(41, other, 20),
        lambda: machine.create(42, milestone, 400),
        lambda: machine.look(41, "summary"), lambda: machine.look(41, "all"),
        lambda: machine.look(41, "unread"), lambda: machine.look(42, "all"),
        lambda: machine.mark_some(41, [0, 1, 2]),  # cached keys change in place
        lambda: machine.write_during_outage(41),  # the relay brings them up to date
        lambda: machine.look(41, "unread"),
        lambda: machine.flush_redis(), lambda: machine.look(41, "all"),
        lambda: machine.ingest_event(42), lambda: machine.look(42, "unread"),
        lambda: machine.mark_all(41), lambda: machine.cleanup(30), lambda: machine.archive(),
        lambda: machine.look(41, "summary"), lambda: machine.look(42, "summary"),
    ]
    for step in script:
        step()
        machine.every_cached_key_equals_postgres()
    machine.teardown()
    # Every kind of cached key was compared with Postgres, after writes had changed it.
    assert {"counts", "items"} <= set(compared), compared
    assert min(compared["counts"], compared["items"]) >= 3, compared

    run_state_machine_as_test(
        FeedMachine,
        settings=settings(max_examples=10, stateful_step_count=10, deadline=None,
                          suppress_health_check=list(HealthCheck)),
    )


def test_concurrent_mark_read_and_mark_all_count_each_item_once(client, state, auth):
    user = 51
    for i in range(60):
        make_item(state, user, ACTIVITY_TYPES[i % len(ACTIVITY_TYPES)], days_ago=i / 100)
    api_summary(client, auth(user))  # cached
    ids = ids_of(state, user)
    results: list[int] = []
    lock = threading.Lock()

    def marker(k: int) -> None:
        for i in range(k, len(ids), 8):
            n = ops.mark_read(state, user, [ids[i], ids[(i + 3) % len(ids)]])
            with lock:
                results.append(n)

    def mark_all() -> None:
        n = ops.mark_read(state, user, None)
        with lock:
            results.append(n)

    threads = [threading.Thread(target=marker, args=(k,)) for k in range(8)]
    threads.append(threading.Thread(target=mark_all))
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "a marker hung"
    assert sum(results) == 60  # every unread item became read exactly once
    body = api_summary(client, auth(user))
    assert body == truth_summary(state, user)
    assert body["unread_count"] == 0 and body["read_count"] == 60
