"""Idle users and the memory budget (issue 6): every per-user key has a TTL, refreshed on
use; one active user's keys (found by SCAN of ``{u:<id>}``) fit the budget per read path
documented in docs/operations.md (bytes by ``MEMORY USAGE``)."""

from __future__ import annotations

import re

import pytest

from cache import activity_feed
from cache.rebuild import scan_user_keys, ttls_and_sizes
from jobs import paths as read_paths
from storage.demo import DemoSizes, seed
from tests.support import ROOT as PROJECT_ROOT
from tests.support.auth import bearer
from tests.support.cache_ops import FROZEN_NOW, active_user

DOC = PROJECT_ROOT / "docs" / "operations.md"
SHORT_TTL = re.compile(r":rf:(rank|inputs)(:|$)")  # page caches, minutes by design


def budget() -> dict[str, int]:
    """``{path: bytes}`` from the budget table of docs/operations.md."""
    out = {}
    for line in DOC.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[0].strip("`") in {*read_paths.READ_PATHS, "total"}:
            out[cells[0].strip("`")] = int(cells[3].replace(",", ""))
    return out


def path_of(key: str) -> str:
    name = key.split("}:", 1)[1]
    for path, prefixes in {
        "group_feed": ("rs:", "groups", "v:rs:", "v:groups"),
        "activity_feed": ("act:", "v:activity"),
        "community_feed": ("cf:", "v:cf_follows", "v:cf_colls"),
        "ranked_feed": ("rf:", "v:calc"),
        "recent_reels": ("reels:", "v:reels"),
    }.items():
        if name.startswith(prefixes):
            return path
    return "other"


@pytest.fixture
def active(client, state, monkeypatch) -> int:
    """The demo data (seed-demo's sizes); its most active user, warmed and signed in."""
    from service import ranked_feed_ops as ranked_feed  # the clock of routes and jobs

    monkeypatch.setattr(ranked_feed, "now", lambda: FROZEN_NOW)
    seed(state.db, DemoSizes())
    user = active_user(state, list(range(1, 201)))
    client.get("/api/reels/recently-viewed", headers=bearer(user))  # the idle mark
    for path in read_paths.get():
        path.warm(state, user)
    return user


def test_every_per_user_key_has_a_ttl_refreshed_on_use(app, client, state, active):
    keys = scan_user_keys(state.cache, active)
    assert {path_of(k) for k in keys} == {*read_paths.READ_PATHS, "other"}
    info = ttls_and_sizes(state.cache, keys)
    assert all(ttl > 0 for ttl, _ in info.values()), info
    # A write keeps the TTL (a SET without KEEPTTL would drop it).
    r = client.post("/api/events/", headers=bearer(1, admin=True),
                    json={"user_id": active, "event_type": "milestone", "title": "t"})
    assert r.status_code == 201, r.get_json()
    recent = activity_feed.feed_key(state.cache.keys, active)
    assert state.cache.redis.exists(recent) and state.cache.redis.ttl(recent) > 0
    # Used again after a while: every key is pushed back to the idle TTL.
    for key in keys:
        state.cache.redis.expire(key, 100)
    app.extensions["hc.activity"]._seen.clear()  # as if another process served the user
    client.get("/api/reels/recently-viewed", headers=bearer(active))
    info = ttls_and_sizes(state.cache, scan_user_keys(state.cache, active))
    for key, (ttl, _) in info.items():
        if SHORT_TTL.search(key):
            assert 0 < ttl <= 100, key
        else:
            assert ttl > state.settings.idle_ttl - 60, (key, ttl)


def test_one_active_users_keys_fit_the_documented_budget(state, active):
    limits = budget()
    assert set(limits) == {*read_paths.READ_PATHS, "total"}, limits
    used: dict[str, int] = {}
    for key, (_, size) in ttls_and_sizes(state.cache, scan_user_keys(state.cache, active)
                                         ).items():
        used[path_of(key)] = used.get(path_of(key), 0) + size
    print("bytes per path of user", active, used)
    for path in read_paths.READ_PATHS:
        assert 0 < used[path] <= limits[path], (path, used[path], limits[path])
    assert sum(used.values()) <= limits["total"], used
