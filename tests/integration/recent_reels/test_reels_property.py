"""Property test: random view sequences against a Python model of "the newest N distinct
reels", with re-watches, batches with out-of-order ``viewed_at``, Redis flushes and Redis
outages. After every step the API's list equals the model and Postgres."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import HealthCheck, example, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from sqlalchemy import text

from cache.outbox import relay_outbox
from tests.support.recent_reels import iso, make_reels, pg_rows, recent, views_count

N = 5  # small, so that trimming happens all the time
REEL_DURATION = 30
USERS = itertools.count(1000)


@pytest.fixture
def settings(settings):
    return settings.replace(max_recent_reel_views=N)


@pytest.fixture
def reels(client, admin_headers, state) -> list[int]:
    """Once per test (shared by every example): 0-7 available, 8 unavailable, 9 missing.

    Ids 7-14 cross from one digit to two, so equal times order '9' before '10'."""
    with state.db.session() as s:
        s.execute(text("ALTER SEQUENCE reels_id_seq RESTART WITH 7"))
        s.commit()
    ids = make_reels(client, admin_headers, 8, duration=REEL_DURATION)
    ids += make_reels(client, admin_headers, 1, available=False)
    assert ids[:8] == list(range(7, 15))
    return ids + [10**9]


class Model:
    """Newest N distinct reels: per reel its newest view (a view at least as new wins),
    ordered by time, ties by the id's text (Redis's order for equal scores). A view
    without a duration keeps the reel's last known one (None on a first view); a reel
    trimmed from the list is forgotten, duration included."""

    def __init__(self) -> None:
        self.best: dict[int, tuple[int, int | None]] = {}
        self.counts: dict[int, int] = {}

    def view(self, reel: int, ms: int, duration: int | None) -> None:
        self.counts[reel] = self.counts.get(reel, 0) + 1
        if duration is not None:
            duration = min(duration, REEL_DURATION)
        if reel not in self.best or ms >= self.best[reel][0]:
            last = self.best[reel][1] if reel in self.best else None
            self.best[reel] = (ms, last if duration is None else duration)

    def request(self, views: list[tuple[int, int, int | None]]) -> None:
        """One request's views of existing reels: they apply in time order (the same
        time: in request order), then the list is trimmed to N."""
        for reel, ms, duration in sorted(views, key=lambda v: v[1]):
            self.view(reel, ms, duration)
        self.best = {reel: self.best[reel] for reel, _, _ in self.listing()}

    def listing(self) -> list[tuple[int, int, int | None]]:
        ordered = sorted(self.best.items(), key=lambda kv: (kv[1][0], str(kv[0]).encode()),
                         reverse=True)
        return [(reel, ms, d) for reel, (ms, d) in ordered[:N]]


reel_index = st.integers(0, 9)  # 0-7 available, 8 unavailable, 9 does not exist
steps = st.lists(
    st.one_of(
        st.tuples(st.just("view"), reel_index, st.none() | st.integers(0, 45),
                  st.integers(0, 2)),
        st.tuples(
            st.just("batch"),
            st.lists(st.tuples(reel_index, st.none() | st.integers(0, 40),
                               st.none() | st.integers(0, 45)), min_size=1, max_size=6),
            st.integers(0, 2),
        ),
        st.just(("flush",)),
        st.just(("down",)),
        st.just(("up",)),
    ),
    max_size=18,
)


# Random sequences may never view during an outage, after a flush or past the cap; this
# one always does (hypothesis runs it first, then the random ones).
EVERY_BRANCH = [
    ("view", 0, 10, 1), ("view", 1, None, 1), ("view", 0, 45, 1),  # a re-watch
    ("down",), ("view", 2, 5, 1),  # a view while Redis is down: the outbox keeps it
    ("batch", [(3, 5, 10), (0, None, 20), (8, None, None)], 1),  # out of order, rejected
    ("up",), ("view", 4, 3, 0),  # recovered: the relayed views show
    ("flush",), ("view", 5, 3, 0),  # a view after Redis lost the list
    ("batch", [(6, 40, None), (7, None, 30), (9, 1, 1)], 2),  # past the cap (N = 5)
    ("down",),  # the test ends with Redis down
]


@hsettings(max_examples=30, deadline=None,
           suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(steps=steps)
@example(steps=EVERY_BRANCH)
def test_list_always_equals_model_and_postgres(client, auth, state, clock, reels, key_prefix,
                                               steps):
    user = next(USERS)
    headers = auth(user)
    model = Model()
    before = {reel: views_count(state, reel) for reel in reels[:8]}
    state.cache.enabled = True

    for step in steps:
        if step[0] == "view":
            _, i, duration, dt = step
            clock.tick(dt)
            r = client.post(f"/api/reels/{reels[i]}/view", json={"view_duration": duration},
                            headers=headers)
            assert r.status_code == (200 if i < 8 else 400 if i == 8 else 404)
            if i < 8:
                model.request([(reels[i], clock.now, duration)])
        elif step[0] == "batch":
            _, items, dt = step
            clock.tick(dt)
            views = []
            for i, ago, duration in items:
                view = {"reel_id": reels[i], "view_duration": duration}
                if ago is not None:
                    view["viewed_at"] = iso(clock.now - ago)
                views.append(view)
            body = client.post("/api/reels/views", json={"views": views}, headers=headers
                               ).get_json()
            assert body["tracked"] == sum(i < 8 for i, _, _ in items)
            assert len(body["rejected"]) == len(items) - body["tracked"]
            model.request([(reels[i], clock.now - (ago or 0), duration)
                           for i, ago, duration in items if i < 8])
        elif step[0] == "flush":  # everything of this test in Redis is lost
            redis = state.cache.redis
            keys = list(redis.scan_iter(match=f"{key_prefix}*", count=1000))
            if keys:
                redis.delete(*keys)
        elif step[0] == "down":
            state.cache.enabled = False
        else:  # Redis answers again: the breaker's recovery relays the outbox first
            state.cache.enabled = True
            relay_outbox(state.db, state.applier, min_age=0)

        expected = model.listing()
        listed = recent(client, headers, per_page=100)
        assert [(x["reel_id"], x["viewed_at"], x["view_duration"]) for x in listed["reels"]] \
            == [(reel, iso(ms), d) for reel, ms, d in expected]
        assert listed["pagination"]["total"] == len(expected)
        assert pg_rows(state, user) == expected

    page = recent(client, headers, page=2, per_page=2)
    assert [x["reel_id"] for x in page["reels"]] == [r for r, _, _ in model.listing()[2:4]]
    for reel in reels[:8]:
        assert views_count(state, reel) == before[reel] + model.counts.get(reel, 0)
    state.cache.enabled = True
    relay_outbox(state.db, state.applier, min_age=0)
