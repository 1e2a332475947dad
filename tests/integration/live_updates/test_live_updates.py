"""Live updates (API section 6): tickets, events whose counts equal the REST answers,
replay with Last-Event-ID, heartbeats, slow consumers, Redis outages, stream restarts."""

from __future__ import annotations

import asyncio
import queue
import socket
import time

import pytest
import redis
import requests

from cache import live_events
from cache.outbox import relay_outbox
from service import create_app
from service.stream_server import Connection
from tests.support.auth import bearer
from tests.support.group_feed import (
    add_member,
    make_group,
    mark,
    mark_all,
    remove_member,
    unread,
)
from tests.support.group_feed import post_item as _post_item
from tests.support.live_updates import SseClient, StreamServer, run_jobs
from tests.support.servers import RedisProcess

TICKET = "/api/v1/stream/ticket"
U = 7  # the subscriber


@pytest.fixture
def stream_settings(settings):
    return settings.replace(stream_heartbeat=0.2)


@pytest.fixture
def server(stream_settings):
    with StreamServer(stream_settings) as srv:
        yield srv


def post_item(client, headers, group_id: int, **extra) -> dict:
    """Post a group item and run the jobs it queued (its members' events are a job)."""
    item = _post_item(client, headers, group_id, **extra)
    run_jobs(client.application.extensions["hc"])
    return item


def ticket(client, user_id: int = U) -> str:
    r = client.post(TICKET, headers=bearer(user_id))
    assert r.status_code == 201, r.get_json()
    return r.get_json()["ticket"]


def subscribe(client, server, user_id: int = U, last_id: str | None = None) -> SseClient:
    headers = {"Last-Event-ID": last_id} if last_id else None
    sse = SseClient(server.url, {"ticket": ticket(client, user_id)}, headers)
    assert sse.status == 200, sse.response.text
    first = sse.next()  # the resume point (id only), or the first replayed event / reset
    assert first is not None and first.id
    if last_id is None:
        assert first.event is None
    sse.first = first  # type: ignore[attr-defined]
    return sse


# --- tickets ---------------------------------------------------------------------------------


def test_ticket_needs_a_signed_in_caller(client):
    r = client.post(TICKET)
    assert r.status_code == 401 and r.get_json()["code"]


def test_ticket_shape(client):
    body = client.post(TICKET, headers=bearer(U)).get_json()
    assert body["expires_in"] == 60 and len(body["ticket"]) >= 24


def test_ticket_works_once_and_lives_60_seconds(client, server, state):
    value = ticket(client)
    key = live_events.ticket_key(state.cache.keys, value)
    assert 0 < state.cache.redis.ttl(key) <= 60
    first = SseClient(server.url, {"ticket": value})
    assert first.status == 200
    again = SseClient(server.url, {"ticket": value})
    assert again.status == 401
    assert again.json()["code"] == "invalid_ticket"
    assert again.response.headers["Content-Type"].startswith("application/json")
    first.close()


@pytest.mark.parametrize("params", [{"ticket": "nope"}, {"ticket": ""}, {}])
def test_bad_or_missing_ticket_is_a_json_401(server, params):
    sse = SseClient(server.url, params)
    assert sse.status == 401
    assert set(sse.json()) >= {"error", "code"}


def test_expired_ticket_is_a_401(client, server, state):
    value = ticket(client)
    state.cache.redis.pexpire(live_events.ticket_key(state.cache.keys, value), 1)
    time.sleep(0.05)
    assert SseClient(server.url, {"ticket": value}).status == 401


def test_bearer_header_opens_a_stream_too(server):
    sse = SseClient(server.url, headers=bearer(U))
    assert sse.status == 200
    sse.close()


def test_ticket_is_bound_to_its_user(client, server, admin_headers):
    group = make_group(client, admin_headers, members=[U, 8])
    mine = subscribe(client, server, U)
    post_item(client, admin_headers, group)
    event = mine.event()
    assert event.data == {"group": group, "unread_count": unread(client, bearer(U), group)}
    mark(client, bearer(8), post_item(client, admin_headers, group)["id"])  # user 8's view
    event = mine.event()  # the new item, not user 8's view
    assert event.data == {"group": group, "unread_count": 2}
    mine.close()


# --- events equal the REST answers -----------------------------------------------------------


def test_group_events_carry_the_rest_counts(client, server, admin_headers):
    group = make_group(client, admin_headers, members=[U])
    me = bearer(U)
    sse = subscribe(client, server)
    items = [post_item(client, admin_headers, group, title=f"t{i}")["id"] for i in range(3)]
    for _ in items:
        assert sse.event().event == "unread"
    assert unread(client, me, group) == 3
    mark(client, me, items[0])
    assert sse.event().data == {"group": group, "unread_count": 2} and unread(client, me,
                                                                              group) == 2
    mark(client, me, items[0], viewed=False)
    assert sse.event().data["unread_count"] == 3 == unread(client, me, group)
    mark_all(client, me, group)
    assert sse.event().data["unread_count"] == 0 == unread(client, me, group)
    # Deleting an item the user viewed leaves their count as it was: no event for them.
    client.delete(f"/api/v1/messaging/feed/{items[1]}/", headers=admin_headers)
    run_jobs(client.application.extensions["hc"])
    assert unread(client, me, group) == 0
    post_item(client, admin_headers, group)
    assert sse.event().data["unread_count"] == 1 == unread(client, me, group)
    sse.close()


def test_the_relay_does_not_repeat_events(client, server, admin_headers, state):
    """The relay re-reads every outbox row its requests already applied: it announces only
    the changes that were not in Redis yet, so a pass adds no event."""
    group = make_group(client, admin_headers, members=[U])
    sse = subscribe(client, server)
    post_item(client, admin_headers, group, title="first")
    assert sse.event().data == {"group": group, "unread_count": 1}
    assert relay_outbox(state.db, state.applier, min_age=0) == 0  # all applied already
    post_item(client, admin_headers, group, title="second")
    assert sse.event().data == {"group": group, "unread_count": 2}, "no repeat in between"
    sse.close()


def test_membership_changes_send_unread_events(client, server, admin_headers):
    group = make_group(client, admin_headers, members=[])
    other = make_group(client, admin_headers, members=[U])
    post_item(client, admin_headers, group)
    me = bearer(U)
    unread(client, me)  # caches the user's groups, so leaving can be told from joining
    sse = subscribe(client, server)
    add_member(client, admin_headers, group, U)
    assert sse.event().data == {"group": group, "unread_count": 1}
    assert unread(client, me)["groups"] == {str(group): 1, str(other): 0}
    remove_member(client, admin_headers, group, U)
    event = sse.event()
    assert event.event in {"unread", "reset"}
    if event.event == "unread":
        assert event.data == {"group": group, "unread_count": 0}
    sse.close()


def test_activity_events_carry_the_summary_count(client, server, admin_headers):
    me = bearer(U)
    client.get("/api/events/activity-feed/summary/", headers=me)
    sse = subscribe(client, server)
    r = client.post("/api/events/", json={"user_id": U, "event_type": "fast_join",
                                          "title": "Joined"}, headers=admin_headers)
    assert r.status_code == 201
    event = sse.event()
    summary = client.get("/api/events/activity-feed/summary/", headers=me).get_json()
    assert event.event == "activity"
    assert event.data["unread_count"] == summary["unread_count"] == 1
    assert event.data["item"]["title"] == "Joined"
    assert event.data["item"]["activity_type_display"] == "Joined Fast"
    client.post("/api/events/activity-feed/mark-read/", json={"mark_all": True}, headers=me)
    assert sse.event().data == {"unread_count": 0}
    sse.close()


def _no_event(sse, seconds: float = 0.3) -> bool:
    try:
        sse.event(timeout=seconds)
    except queue.Empty:
        return True
    return False


@pytest.mark.parametrize("appended", [False, True],
                         ids=["lost before Redis", "appended, answer lost"])
def test_an_announce_that_timed_out_is_made_by_the_relay(client, server, admin_headers,
                                                         state, monkeypatch, appended):
    """The request's announce (its second round trip) times out: the change is in Redis,
    so the relay announces it from its outbox row, once; if the events were appended after
    all (only the answer was lost), the relay adds nothing."""
    group = make_group(client, admin_headers, members=[U])
    item = post_item(client, admin_headers, group)
    me = bearer(U)
    client.get("/api/events/activity-feed/summary/", headers=me)
    sse = subscribe(client, server)
    real = live_events.announce

    def timed_out(r, keys, announcements):
        if appended:
            real(r, keys, announcements)
        raise redis.exceptions.TimeoutError("Timeout reading from socket")

    monkeypatch.setattr(live_events, "announce", timed_out)
    r = client.post("/api/events/", json={"user_id": U, "event_type": "fast_join",
                                          "title": "Joined"}, headers=admin_headers)
    assert r.status_code == 201
    mark(client, me, item["id"])  # a read-state change
    monkeypatch.undo()
    if appended:
        got = [sse.event(), sse.event()]
    else:
        assert _no_event(sse)
        assert relay_outbox(state.db, state.applier, min_age=0) == 0  # all in Redis already
        got = [sse.event(), sse.event()]
    summary = client.get("/api/events/activity-feed/summary/", headers=me).get_json()
    assert {e.event: e.data["unread_count"] for e in got} == {
        "activity": summary["unread_count"], "unread": unread(client, me, group)} == {
        "activity": 1, "unread": 0}
    relay_outbox(state.db, state.applier, min_age=0)  # again: nothing to announce
    assert _no_event(sse)
    sse.close()


def test_users_without_a_stream_get_no_events_appended(client, admin_headers, state):
    group = make_group(client, admin_headers, members=[U])
    post_item(client, admin_headers, group)
    assert not state.cache.redis.exists(live_events.events_key(state.cache.keys, U))


# --- replay, heartbeats ------------------------------------------------------------------------


def test_last_event_id_replays_what_was_missed(client, server, admin_headers):
    group = make_group(client, admin_headers, members=[U])
    sse = subscribe(client, server)
    post_item(client, admin_headers, group)
    seen = sse.event()
    sse.close()
    post_item(client, admin_headers, group)
    post_item(client, admin_headers, group)
    again = subscribe(client, server, last_id=seen.id)
    replayed = [again.first, again.event()]
    assert [m.data["unread_count"] for m in replayed] == [2, 3]
    assert all(m.event == "unread" for m in replayed)
    again.close()


def test_unknown_or_too_old_last_event_id_starts_with_reset(client, server, state):
    sse = subscribe(client, server, last_id="1-0")
    assert sse.first.event == "reset" and sse.first.data == {}
    sse.close()
    sse = subscribe(client, server, last_id="garbage")
    assert sse.first.event == "reset"
    sse.close()


def test_more_than_500_missed_events_is_a_reset(client, server, state):
    sse = subscribe(client, server)
    mark_id = sse.first.id
    sse.close()
    events = [(U, "unread", {"group": 1, "unread_count": n}) for n in range(501)]
    live_events.append(state.cache.redis, state.cache.keys, events)
    again = subscribe(client, server, last_id=mark_id)
    assert again.first.event == "reset"
    again.close()
    live_events.append(state.cache.redis, state.cache.keys, events[:3])
    # 500 or fewer replay
    ids = [m[0] for m in state.cache.redis.xrange(live_events.events_key(state.cache.keys, U))]
    third = subscribe(client, server, last_id=ids[-501].decode())
    assert third.first.event == "unread" and third.first.id == ids[-500].decode()
    third.close()


def test_heartbeats(client, server):
    sse = subscribe(client, server)
    pings = [sse.next(pings=True) for _ in range(2)]
    assert all(p is not None and p.comment == "ping" for p in pings)
    sse.close()


# --- slow consumers --------------------------------------------------------------------------


def test_a_full_queue_drops_the_connection():
    async def scenario() -> Connection:
        conn = Connection(1, asyncio.Queue(2))
        assert conn.send(b"a") and conn.send(b"b")
        assert not conn.send(b"c")
        return conn

    assert asyncio.run(scenario()).closed


def test_a_client_that_stops_reading_is_dropped_and_others_go_on(client, stream_settings,
                                                                  state):
    with StreamServer(stream_settings.replace(stream_queue_max=4)) as srv:
        fast = subscribe(client, srv, user_id=8)  # another user, on the same process
        slow = socket.socket()
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        slow.connect(("127.0.0.1", srv.port))
        slow.sendall(f"GET /api/v1/stream?ticket={ticket(client)} HTTP/1.1\r\n"
                     f"Host: 127.0.0.1\r\n\r\n".encode())
        deadline = time.monotonic() + 10
        while srv.streams() < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        big = {"group": 1, "unread_count": 1, "pad": "x" * 20_000}
        for _ in range(200):
            live_events.append(state.cache.redis, state.cache.keys, [(U, "unread", big)])
            if srv.streams() < 2:
                break
            time.sleep(0.01)
        deadline = time.monotonic() + 10
        while srv.streams() > 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert srv.streams() == 1  # the slow one went
        live_events.append(state.cache.redis, state.cache.keys,
                           [(8, "unread", {"group": 1, "unread_count": 42})])
        assert fast.event().data == {"group": 1, "unread_count": 42}
        fast.close()
        slow.close()


# --- Redis down, stream restarts ---------------------------------------------------------------


@pytest.fixture
def own_redis(tmp_path):
    server = RedisProcess(tmp_path).start()
    yield server
    server.stop()


def test_redis_down_streams_keep_pinging_and_resume(settings, own_redis, admin_headers):
    own = settings.replace(redis_url=own_redis.url, stream_heartbeat=0.2,
                           breaker_cooldown=0.2, redis_read_timeout=0.2)
    app = create_app({"SETTINGS": own, "TESTING": True})
    client, state = app.test_client(), app.extensions["hc"]
    group = make_group(client, admin_headers, members=[U])
    with StreamServer(own) as srv:
        sse = subscribe(client, srv)
        post_item(client, admin_headers, group)
        assert sse.event().data["unread_count"] == 1
        own_redis.stop()
        for _ in range(3):  # still open, still pinging
            assert sse.next(pings=True).comment == "ping"
        _post_item(client, admin_headers, group)  # commits; the cache change waits
        assert unread(client, bearer(U), group) == 2  # REST from Postgres
        own_redis.start()  # back, empty: the history is gone
        assert sse.event(timeout=15).event == "reset"
        assert unread(client, bearer(U), group) == 2  # what the client re-reads on reset
        # The outage's change is applied; Redis lost its version copy, so it is covered by
        # the reset and not announced again.
        relay_outbox(state.db, state.applier, min_age=0)
        post_item(client, admin_headers, group)
        assert sse.event(timeout=15).data == {"group": group, "unread_count": 3}
        sse.close()
    state.close()


def test_stream_process_restart_loses_nothing_replayable(client, stream_settings,
                                                         admin_headers):
    group = make_group(client, admin_headers, members=[U])
    with StreamServer(stream_settings) as first:
        sse = subscribe(client, first)
        post_item(client, admin_headers, group)
        last = sse.event()
        port = first.port
    post_item(client, admin_headers, group)  # while no stream process runs
    with StreamServer(stream_settings, port=port) as second:
        again = subscribe(client, second, last_id=last.id)
        assert again.first.event == "unread" and again.first.data["unread_count"] == 2
        again.close()


def test_healthz_recovers_when_only_the_heartbeat_ping_failed(server):
    """A ping that fails once (the Pub/Sub subscription never dropped) reads as "down" until
    a later ping answers, not until a resubscription that never comes."""
    hub = server.hub
    real_ping = hub.redis.ping
    failures = []

    async def flaky_ping(*args, **kwargs):
        if not failures:
            failures.append(1)
            raise ConnectionError("one lost ping")
        return await real_ping(*args, **kwargs)

    health = f"http://127.0.0.1:{server.port}/healthz"
    deadline = time.monotonic() + 5
    while requests.get(health, timeout=5).json()["redis"] != "ok":
        assert time.monotonic() < deadline, "never healthy"
        time.sleep(0.05)
    hub.redis.ping = flaky_ping
    seen = []
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        seen.append(requests.get(health, timeout=5).json()["redis"])
        if "down" in seen and seen[-1] == "ok":
            break
        time.sleep(0.05)
    assert "down" in seen, "the failed ping never showed"
    assert seen[-1] == "ok", f"still down after a good ping: {seen[-5:]}"


def test_last_event_id_in_the_query_replays_like_the_header(client, server, admin_headers):
    """A browser reconnects with a new ticket through a new EventSource, which cannot set
    headers: ``?last_event_id=`` resumes like ``Last-Event-ID``."""
    group = make_group(client, admin_headers, members=[U])
    sse = subscribe(client, server)
    post_item(client, admin_headers, group)
    seen = sse.event()
    sse.close()
    post_item(client, admin_headers, group)
    again = SseClient(server.url, {"ticket": ticket(client), "last_event_id": seen.id})
    assert again.status == 200
    missed = again.next()
    assert missed.event == "unread" and missed.data == {"group": group, "unread_count": 2}
    again.close()
    fresh = SseClient(server.url, {"ticket": ticket(client), "last_event_id": "1-0"})
    assert fresh.next().event == "reset"  # not replayable: reset, as with the header
    fresh.close()


def test_the_openapi_document_describes_the_resume_parameters(client):
    operation = client.get("/openapi.json").get_json()["paths"]["/api/v1/stream"]["get"]
    params = {(p["in"], p["name"]) for p in operation["parameters"]}
    assert {("query", "ticket"), ("query", "last_event_id"),
            ("header", "Last-Event-ID")} <= params
    assert "EventSource" in next(p["description"] for p in operation["parameters"]
                                 if p["name"] == "last_event_id")
