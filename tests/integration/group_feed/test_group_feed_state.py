"""Stateful property test of the group feed's read state.

Random sequences of item create / delete, mark-viewed / unread / mark-all, membership
changes, and Redis trouble (flush, restart, down, frozen) against a Redis server of the
test's own. After every step, each user's ``has_viewed`` for every item and unread counts
(per group and over all groups) equal a pure Postgres computation, and non-members get
403 on the group feed.
"""

from __future__ import annotations

import itertools
import os
import signal
import time

import redis
from hypothesis import HealthCheck
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from tests.support.auth import bearer
from tests.support.group_feed import (  # noqa: F401 - fixtures
    COOLDOWN,
    FEED,
    chaos_app,
    make_group,
    mark,
    mark_all,
    own_redis,
    pg_unread,
    pg_viewed,
    unread,
    viewed_map,
)

USERS, GROUPS = 2, 2
# Each run: the fixed script below (every rule, every Redis trouble, a mark while Redis is
# down and while it is frozen, reads after each recovery), then EXAMPLES random sequences
# of 20 steps (60 by default: each of the 11 rules about 5 times, new interleavings each
# run), the invariant after every step. Most of the time is the invariant (its reads and
# the oracle's). Deeper runs:
# GROUP_FEED_EXAMPLES=200 pytest tests/integration/group_feed/test_group_feed_state.py
EXAMPLES = int(os.environ.get("GROUP_FEED_EXAMPLES", "3"))


class Pick:
    """Stands in for ``st.data()`` when a script calls a rule: draws a chosen value."""

    def __init__(self, value: object) -> None:
        self.value = value

    def draw(self, strategy: object) -> object:
        return self.value


def test_read_state_matches_postgres(chaos_app, own_redis):  # noqa: F811
    client = chaos_app.test_client()
    app_state = chaos_app.extensions["hc"]
    admin = bearer(1, admin=True)
    user_ids = itertools.count(1000)

    class ReadStateMachine(RuleBasedStateMachine):
        @initialize(joins=st.lists(st.tuples(st.integers(0, USERS - 1),
                                             st.integers(0, GROUPS - 1)), max_size=6))
        def setup(self, joins):
            self.users = [next(user_ids) for _ in range(USERS)]
            self.groups = [make_group(client, admin) for _ in range(GROUPS)]
            self.members = {g: set() for g in self.groups}
            self.items: list[tuple[int, int, int]] = []  # (id, group, author)
            self.deleted: set[int] = set()
            self.redis = "up"  # up / down (killed) / frozen
            for u, g in joins:
                self.join(u, g)

        # --- membership --------------------------------------------------------------------

        @rule(u=st.integers(0, USERS - 1), g=st.integers(0, GROUPS - 1))
        def join(self, u, g):
            user, group = self.users[u], self.groups[g]
            r = client.post(f"/api/v1/groups/{group}/members/", json={"user_id": user},
                            headers=admin)
            assert r.status_code == 201
            self.members[group].add(user)

        @rule(u=st.integers(0, USERS - 1), g=st.integers(0, GROUPS - 1))
        def leave(self, u, g):
            user, group = self.users[u], self.groups[g]
            r = client.delete(f"/api/v1/groups/{group}/members/{user}/", headers=admin)
            assert r.status_code == 204
            self.members[group].discard(user)

        # --- items -------------------------------------------------------------------------

        @rule(u=st.integers(0, USERS - 1), g=st.integers(0, GROUPS - 1))
        def create(self, u, g):
            user, group = self.users[u], self.groups[g]
            r = client.post(FEED, json={"group": group, "title": "t", "content_type": "text"},
                            headers=bearer(user))
            if user in self.members[group]:
                assert r.status_code == 201, r.get_json()
                self.items.append((r.get_json()["id"], group, user))
            else:
                assert r.status_code == 403

        @precondition(lambda self: self.items)
        @rule(data=st.data(), by_admin=st.booleans())
        def delete(self, data, by_admin):
            item, group, author = data.draw(st.sampled_from(self.items))
            r = client.delete(f"{FEED}{item}/", headers=admin if by_admin else bearer(author))
            if item in self.deleted or not (by_admin or author in self.members[group]):
                assert r.status_code == 404
            else:
                assert r.status_code == 204
                self.deleted.add(item)

        # --- read state --------------------------------------------------------------------

        def _visible(self, user, item, group):
            return item not in self.deleted and user in self.members[group]

        @precondition(lambda self: self.items)
        @rule(data=st.data(), u=st.integers(0, USERS - 1), viewed=st.booleans())
        def mark_one(self, data, u, viewed):
            item, group, _ = data.draw(st.sampled_from(self.items))
            user = self.users[u]
            r = mark(client, bearer(user), item, viewed)
            assert r.status_code == (200 if self._visible(user, item, group) else 404)

        @rule(u=st.integers(0, USERS - 1), g=st.integers(0, GROUPS - 1))
        def mark_everything(self, u, g):
            user, group = self.users[u], self.groups[g]
            r = mark_all(client, bearer(user), group)
            assert r.status_code == (200 if user in self.members[group] else 403)

        # --- Redis trouble -----------------------------------------------------------------

        @precondition(lambda self: self.redis == "up")
        @rule()
        def flush(self):
            redis.Redis.from_url(own_redis.url).flushall()

        @precondition(lambda self: self.redis == "up")
        @rule()
        def restart(self):
            own_redis.stop()
            own_redis.start()

        @precondition(lambda self: self.redis == "up")
        @rule()
        def go_down(self):
            own_redis.stop()
            self.redis = "down"

        @precondition(lambda self: self.redis == "up")
        @rule()
        def freeze(self):
            own_redis.proc.send_signal(signal.SIGSTOP)
            self.redis = "frozen"

        @precondition(lambda self: self.redis != "up")
        @rule()
        def come_back(self):
            if self.redis == "frozen":
                own_redis.proc.send_signal(signal.SIGCONT)
            else:
                own_redis.start()
            self.redis = "up"
            # Let the breaker's cooldown pass: the next read is its probe, which must see
            # the writes the outage kept out of Redis (the recovery hook runs first).
            time.sleep(COOLDOWN)

        def teardown(self):
            if getattr(self, "redis", "up") != "up":
                self.come_back()

        # --- the property --------------------------------------------------------------------

        @invariant()
        def answers_equal_postgres(self):
            if not hasattr(self, "users"):
                return
            for user in self.users:
                headers = bearer(user)
                truth = pg_unread(app_state, user)
                assert set(truth) == {g for g in self.groups if user in self.members[g]}
                total = unread(client, headers)
                mine = {int(g): n for g, n in total["groups"].items() if int(g) in self.groups}
                assert mine == truth
                for group in self.groups:
                    if user not in self.members[group]:
                        r = client.get(FEED, query_string={"group": group}, headers=headers)
                        assert r.status_code == 403
                        continue
                    assert viewed_map(client, headers, group) == pg_viewed(app_state, user,
                                                                           group)
                    assert unread(client, headers, group) == truth[group]

    # Random runs may never mark while Redis is down or frozen, or read after it came back:
    # this script does each once (the invariant after every step), then the random runs.
    machine = ReadStateMachine()
    breaker = app_state.cache.breaker

    def item(n: int) -> Pick:
        return Pick(machine.items[n])

    script = [
        lambda: machine.setup(joins=[(0, 0), (1, 0), (0, 1)]),
        lambda: machine.create(0, 0), lambda: machine.create(1, 0),
        lambda: machine.create(0, 1), lambda: machine.create(1, 1),  # not a member: 403
        lambda: machine.mark_one(item(0), 0, True), lambda: machine.mark_one(item(1), 1, True),
        lambda: machine.go_down(),
        lambda: machine.mark_one(item(1), 0, True), lambda: machine.mark_everything(1, 0),
        lambda: machine.come_back(),
        lambda: machine.freeze(), lambda: machine.mark_one(item(0), 0, False),
        lambda: machine.come_back(),
        lambda: machine.flush(), lambda: machine.mark_one(item(2), 0, True),
        lambda: machine.restart(), lambda: machine.leave(0, 0),
        lambda: machine.delete(item(1), True), lambda: machine.join(0, 0),
    ]
    states = []
    for step in script:
        step()
        machine.answers_equal_postgres()
        states.append(breaker.state)
    machine.teardown()
    # The outage steps opened the breaker; after each come_back the reads used Redis again.
    assert "open" in states[7:10], states
    assert states[10] == "closed" and states[13] == "closed", states
    assert len(machine.items) == 3 and machine.deleted == {machine.items[1][0]}

    run_state_machine_as_test(
        ReadStateMachine,
        settings=hsettings(max_examples=EXAMPLES, stateful_step_count=20, deadline=None,
                           suppress_health_check=[HealthCheck.too_slow]),
    )
