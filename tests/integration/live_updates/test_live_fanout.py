"""A group item's events are a job: the request queues it, the outbox relay re-queues what a
crash lost, the job announces only what Redis holds, and each member's last event equals
the REST count even when a write lands while the job runs."""

from __future__ import annotations

import queue

import pytest

from cache import live_events
from cache.client import CacheUnavailable
from cache.outbox import relay_outbox
from tests.support.auth import bearer
from tests.support.group_feed import make_group, mark, post_item, unread
from tests.support.live_updates import SseClient, StreamServer, run_jobs

MEMBERS = (7, 8, 9)


@pytest.fixture
def server(settings):
    with StreamServer(settings.replace(stream_heartbeat=0.2)) as srv:
        yield srv


def listen(client, server, user_id: int) -> SseClient:
    r = client.post("/api/v1/stream/ticket", headers=bearer(user_id))
    sse = SseClient(server.url, {"ticket": r.get_json()["ticket"]})
    assert sse.status == 200 and sse.next().id  # the resume point
    return sse


def quiet(sse: SseClient, seconds: float = 0.3) -> bool:
    """No named event arrives within ``seconds``."""
    try:
        sse.event(timeout=seconds)
    except queue.Empty:
        return True
    return False


@pytest.fixture
def group_and_streams(client, server, admin_headers):
    group = make_group(client, admin_headers, members=MEMBERS)
    streams = {u: listen(client, server, u) for u in MEMBERS}
    yield group, streams
    for sse in streams.values():
        sse.close()


def test_the_request_only_queues_one_job(client, state, admin_headers, group_and_streams):
    group, streams = group_and_streams
    first = post_item(client, admin_headers, group)
    run_jobs(state)
    assert all(sse.event().data["unread_count"] == 1 for sse in streams.values())
    assert mark(client, bearer(8), first["id"]).status_code in (200, 201, 204)
    assert streams[8].event().data["unread_count"] == 0
    unread(client, bearer(7), group)  # 7's read state is cached; 8's and 9's are not
    keys = state.cache.keys
    state.cache.redis.delete(live_events.gf_cache.key(keys, 8, group))  # evicted
    assert state.cache.redis.exists(live_events.gf_cache.key(keys, 7, group))
    assert not state.cache.redis.exists(live_events.gf_cache.key(keys, 9, group))
    post_item(client, admin_headers, group)
    assert state.queue().count == 1  # one job, whatever the group's size
    assert quiet(streams[7]), "no member's event before the job runs"
    run_jobs(state)
    got = {user_id: sse.event().data for user_id, sse in streams.items()}
    assert got == {u: {"group": group, "unread_count": 1 if u == 8 else 2} for u in MEMBERS}
    assert {u: unread(client, bearer(u), group) for u in MEMBERS} == {7: 2, 8: 1, 9: 2}


def test_a_fan_out_lost_after_the_apply_is_queued_by_the_relay(
        client, state, admin_headers, group_and_streams, monkeypatch):
    group, streams = group_and_streams
    publisher = state.applier.publisher
    # The request dies between its apply and its enqueue.
    monkeypatch.setattr(publisher, "enqueue_fan_out", lambda fan_outs: None)
    post_item(client, admin_headers, group)
    monkeypatch.undo()
    assert state.queue().count == 0
    assert relay_outbox(state.db, state.applier, min_age=0) == 0  # Redis had the change
    assert state.queue().count == 1
    run_jobs(state)
    assert all(sse.event().data == {"group": group, "unread_count": 1}
               for sse in streams.values())
    # A second relay pass over the same row (or the request's own enqueue) repeats nothing.
    relay_outbox(state.db, state.applier, min_age=0)
    assert state.queue().count == 0
    run_jobs(state)
    assert quiet(streams[7])


@pytest.mark.parametrize("cached", [True, False], ids=["group cached", "group not cached"])
def test_a_change_lost_before_its_apply_is_applied_then_announced_by_the_relay(
        client, state, admin_headers, group_and_streams, monkeypatch, cached):
    group, streams = group_and_streams
    if cached:  # the group's bitmap and version copy are in Redis: the relay finds it behind
        post_item(client, admin_headers, group)
        run_jobs(state)
        assert all(sse.event().data["unread_count"] == 1 for sse in streams.values())
    real_apply = state.applier.apply

    def crash(changes, by="request", announce=True):
        if by == "request":
            raise CacheUnavailable("the request died before its apply")
        return real_apply(changes, by=by, announce=announce)

    monkeypatch.setattr(state.applier, "apply", crash)
    post_item(client, admin_headers, group)
    assert state.queue().count == 0
    assert quiet(streams[7])
    assert relay_outbox(state.db, state.applier, min_age=0) >= 1
    run_jobs(state)
    count = 2 if cached else 1
    for user_id, sse in streams.items():
        assert sse.event().data == {"group": group, "unread_count": count}
        assert unread(client, bearer(user_id), group) == count


def test_no_event_for_a_version_redis_does_not_hold(client, state, admin_headers,
                                                    group_and_streams):
    group, streams = group_and_streams
    post_item(client, admin_headers, group)
    run_jobs(state)
    assert streams[7].event().data["unread_count"] == 1
    version = int(state.cache.redis.get(state.cache.keys.version(
        live_events.gf_cache.live_scope(group))))
    publisher = state.applier.publisher
    assert publisher.fan_out_group(group, version + 1) == 0  # not applied (yet)
    assert publisher.fan_out_group(group, version - 1) == 0  # superseded
    assert quiet(streams[7])


def test_a_write_during_the_fan_out_does_not_leave_a_stale_badge(
        client, state, admin_headers, group_and_streams, monkeypatch):
    """User 7 marks the item viewed after the job read their state and before it appended:
    the job's event (1) lands after the mark's (0); its check sees the newer read state
    and sends 0 again, so the badge ends equal to REST."""
    group, streams = group_and_streams
    item = post_item(client, admin_headers, group)
    real_append = live_events.append
    injected = []

    def append_after_a_mark(client_, keys, events):
        if not injected and any(e[0] == 7 for e in events):
            injected.append(1)
            assert mark(client, bearer(7), item["id"]).status_code in (200, 201, 204)
        return real_append(client_, keys, events)

    monkeypatch.setattr(live_events, "append", append_after_a_mark)
    run_jobs(state)
    seen = [streams[7].event().data["unread_count"] for _ in range(3)]
    assert injected
    assert seen == [0, 1, 0]  # the mark's, the job's (stale by then), the job's repair
    assert quiet(streams[7])
    assert unread(client, bearer(7), group) == 0
    assert streams[8].event().data["unread_count"] == 1 == unread(client, bearer(8), group)
