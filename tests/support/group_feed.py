"""Shared helpers of the group feed tests: API calls and the pure-Postgres oracle."""

from __future__ import annotations

import signal
from typing import Any

import pytest
from sqlalchemy import text

from service import create_app
from service.settings import Settings
from tests.support.servers import RedisProcess

FEED = "/api/v1/messaging/feed/"
COOLDOWN = 0.3  # chaos_app's breaker: seconds before it probes a Redis that failed


def make_group(client, admin_headers, members=(), name: str = "G") -> int:
    r = client.post("/api/v1/groups/", json={"name": name}, headers=admin_headers)
    assert r.status_code == 201, r.get_json()
    group_id = r.get_json()["id"]
    for user_id in members:
        add_member(client, admin_headers, group_id, user_id)
    return group_id


def add_member(client, admin_headers, group_id: int, user_id: int) -> None:
    r = client.post(f"/api/v1/groups/{group_id}/members/", json={"user_id": user_id},
                    headers=admin_headers)
    assert r.status_code == 201, r.get_json()


def remove_member(client, admin_headers, group_id: int, user_id: int) -> None:
    r = client.delete(f"/api/v1/groups/{group_id}/members/{user_id}/", headers=admin_headers)
    assert r.status_code == 204


def post_item(client, headers, group_id: int, title: str = "hello", **extra: Any) -> dict:
    r = client.post(FEED, json={"group": group_id, "title": title, "content_type": "text",
                                **extra}, headers=headers)
    assert r.status_code == 201, r.get_json()
    return r.get_json()


def feed(client, headers, group_id: int, **params: Any) -> list[dict]:
    r = client.get(FEED, query_string={"group": group_id, **params}, headers=headers)
    assert r.status_code == 200, r.get_json()
    return r.get_json()


def viewed_map(client, headers, group_id: int) -> dict[int, bool]:
    return {i["id"]: i["has_viewed"] for i in feed(client, headers, group_id, limit=200)}


def unread(client, headers, group_id: int | None = None) -> Any:
    params = {} if group_id is None else {"group": group_id}
    r = client.get(FEED + "unread-count/", query_string=params, headers=headers)
    assert r.status_code == 200, r.get_json()
    body = r.get_json()
    return body if group_id is None else body["unread_count"]


def mark(client, headers, item_id: int, viewed: bool = True):
    url = f"{FEED}{item_id}/mark-viewed/"
    return client.post(url, headers=headers) if viewed else client.delete(url, headers=headers)


def mark_all(client, headers, group_id: int):
    return client.post(FEED + "mark-all-viewed/", query_string={"group": group_id},
                       headers=headers)


# --- the oracle: Postgres alone, written independently of storage/group_feed.py -----------


def pg_viewed(state, user_id: int, group_id: int) -> dict[int, bool]:
    with state.db.session() as s:
        rows = s.execute(text(
            "SELECT i.id, EXISTS (SELECT 1 FROM feed_item_views v"
            "  WHERE v.item_id = i.id AND v.user_id = :u)"
            " FROM feed_items i WHERE i.group_id = :g AND i.deleted_at IS NULL"
        ), {"u": user_id, "g": group_id}).all()
    return {r[0]: r[1] for r in rows}


def pg_unread(state, user_id: int) -> dict[int, int]:
    """Unread count per group the user is a member of."""
    with state.db.session() as s:
        rows = s.execute(text(
            "SELECT m.group_id, count(i.id) FROM group_members m"
            " LEFT JOIN feed_items i ON i.group_id = m.group_id AND i.deleted_at IS NULL"
            "  AND NOT EXISTS (SELECT 1 FROM feed_item_views v"
            "                  WHERE v.item_id = i.id AND v.user_id = m.user_id)"
            " WHERE m.user_id = :u GROUP BY m.group_id"
        ), {"u": user_id}).all()
    return {r[0]: r[1] for r in rows}


# --- fixtures: an app on a Redis server of the test's own, to stop, freeze or restart ----


@pytest.fixture
def own_redis(tmp_path):
    server = RedisProcess(tmp_path).start()
    yield server
    if server.proc and server.proc.poll() is None:
        server.proc.send_signal(signal.SIGCONT)
    server.stop()


@pytest.fixture
def chaos_app(settings, own_redis, redis_url):
    app = create_app({
        "SETTINGS": settings.replace(
            redis_url=own_redis.url, rq_redis_url=redis_url,
            breaker_failures=1, breaker_cooldown=COOLDOWN, lease_wait_ms=50,
            # The service's own timeouts (``settings`` has longer ones): this Redis is frozen.
            redis_read_timeout=Settings.redis_read_timeout,
            redis_connect_timeout=Settings.redis_connect_timeout,
        ),
        "TESTING": True,
    })
    yield app
    app.extensions["hc"].close()
