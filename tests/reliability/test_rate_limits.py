"""Rate limits (API.md "Conventions"): per address for anonymous callers, per user when
signed in, the admin fan-out on top; 429 + JSON + Retry-After; shared by every process
through Redis; ops endpoints exempt; Redis down admits."""

from __future__ import annotations

import pytest

from cache.keys import Keyspace
from cache.rate_limits import Limit, RateCounters
from service import create_app
from tests.support.auth import bearer

FEED = "/community/feed?feed_type=recent"
MID_WINDOW = 1_800_000_020.0  # 20 s after a 60 s window starts
ADMIN = bearer(1, admin=True)


@pytest.fixture
def limited(settings, request):
    """``limited(**limits)`` -> an app with those limits (the others off); closed after."""
    made = []

    def make(**limits):
        app = create_app({"SETTINGS": settings.replace(**limits), "TESTING": True})
        # A fixed time, 20 s into a window: a test never straddles two windows.
        app.extensions["hc.rate_limits"].clock = lambda: MID_WINDOW
        made.append(app)
        return app

    yield make
    for app in made:
        app.extensions["hc.rate_limits"].close()
        app.extensions["hc"].close()


def sync(*apps) -> None:
    """What each process's sync thread does every RATE_LIMIT_SYNC_INTERVAL: twice round,
    so every process has read every other's counts."""
    for _ in range(2):
        for app in apps:
            app.extensions["hc.rate_limits"].sync()


def test_anonymous_callers_are_limited_per_address(limited):
    assert MID_WINDOW % 60 == 20
    app = limited(rate_limit_anonymous=5)
    client = app.test_client()
    assert [client.get(FEED).status_code for _ in range(5)] == [200] * 5
    refused = client.get(FEED)
    assert refused.status_code == 429 and refused.is_json
    assert refused.json["code"] == "rate_limited"
    assert refused.headers["Retry-After"] == "40"  # seconds to the end of the window
    other = client.get(FEED, environ_base={"REMOTE_ADDR": "10.9.9.9"})
    assert other.status_code == 200  # another address has its own count
    assert client.get(FEED, headers=bearer(5)).status_code == 200  # users: their own limit
    assert client.get("/healthz").status_code == 200  # ops endpoints are never limited
    assert client.get("/readyz").status_code == 200


def test_a_users_limit_holds_across_processes(limited):
    one, two = limited(rate_limit_user=6), limited(rate_limit_user=6)
    for app in (one, two):
        for _ in range(3):
            assert app.test_client().get(FEED, headers=bearer(7)).status_code == 200
    sync(one, two)
    for app in (one, two):
        assert app.test_client().get(FEED, headers=bearer(7)).status_code == 429
        assert app.test_client().get(FEED, headers=bearer(8)).status_code == 200


def test_fan_out_limit_is_exact_across_processes(limited):
    one, two = limited(rate_limit_fanout=2), limited(rate_limit_fanout=2)
    body = {"user_ids": [2, 3], "activity_type": "fast_reminder", "title": "r"}
    codes = [app.test_client().post("/api/events/activity-feed/items/", headers=ADMIN,
                                    json=body).status_code for app in (one, two, one, two)]
    assert codes == [202, 202, 429, 429]  # counted in Redis at once: no sync needed


def test_forwarded_for_is_believed_only_from_trusted_hops(limited):
    direct = limited(rate_limit_anonymous=1)
    spoofed = {"X-Forwarded-For": "203.0.113.9"}
    client = direct.test_client()
    assert client.get(FEED, headers=spoofed).status_code == 200
    assert client.get(FEED, headers={"X-Forwarded-For": "198.51.100.1"}).status_code == 429
    proxied = limited(rate_limit_anonymous=1, trusted_proxy_hops=1).test_client()
    assert proxied.get(FEED, headers=spoofed).status_code == 200
    assert proxied.get(FEED, headers={"X-Forwarded-For": "198.51.100.1"}).status_code == 200
    assert proxied.get(FEED, headers=spoofed).status_code == 429


def test_redis_down_admits_requests(settings, faulty_redis):
    app = create_app({"SETTINGS": settings.replace(redis_url=faulty_redis.url,
                                                   rate_limit_user=2), "TESTING": True})
    client = app.test_client()
    faulty_redis.kill9()
    try:
        counters = app.extensions["hc.rate_limits"]
        codes = []
        for _ in range(4):
            codes.append(client.get(FEED, headers=bearer(9)).status_code)
            counters.sync()  # fails: the counts are kept for later
        assert 429 not in codes[:2] and 500 not in codes, codes
    finally:
        app.extensions["hc.rate_limits"].close()
        app.extensions["hc"].close()


def test_windows_roll_over(redis_url, key_prefix):
    from cache.client import connect

    now = [MID_WINDOW]
    client = connect(redis_url, 2.0, 2.0)
    counters = RateCounters(client, Keyspace(key_prefix), 60, clock=lambda: now[0])
    limit = Limit("req", 2, 60)
    assert [counters.hit("u:1", limit) for _ in range(2)] == [None, None]
    assert counters.hit("u:1", limit) == 40  # seconds to the end of this window
    counters.sync()
    now[0] += 40  # the next window: a fresh count
    assert counters.hit("u:1", limit) is None
    counters.sync()
    key, _ = counters.key("u:1", limit, now[0])
    assert int(client.get(key)) == 1 and client.ttl(key) > 0
    now[0] -= 40  # a clock set back: counted in the earlier window's counter again
    earlier, _ = counters.key("u:1", limit, now[0])
    assert counters.hit("u:1", limit) is None
    counters.sync()
    assert int(client.get(earlier)) == 3 and int(client.get(key)) == 1
    counters.close()
    client.close()
