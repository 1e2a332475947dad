"""Warm jobs: enqueued once when an idle user returns, deduplicated, run on 'warm'."""

from __future__ import annotations

from rq import SimpleWorker

from jobs import warm
from jobs.context import use_state
from jobs.paths import ReadPath
from service import warming

CALLS: list[int] = []


def fake_warmer(state, user_id: int) -> None:
    CALLS.append(user_id)


def test_idle_user_gets_one_warm_job(app, client, state, auth, monkeypatch):
    fake = ReadPath("fake", check=lambda s, u: [], rebuild=lambda s, u: None, warm=fake_warmer)
    monkeypatch.setattr(warm, "READ_PATHS", {"fake": fake})
    CALLS.clear()
    headers = auth(77)
    client.post("/api/v1/groups/", json={"name": "g"}, headers=headers)  # 403 but signed in
    assert state.queue("warm").count == 1
    # Active now: more requests, from any process, enqueue nothing more.
    app.extensions["hc.activity"]._seen.clear()  # as if another process served them
    for _ in range(3):
        client.post("/api/v1/groups/", json={"name": "g"}, headers=headers)
    assert state.queue("warm").count == 1
    use_state(state)
    try:
        SimpleWorker([state.queue("warm")], connection=state.queue_redis).work(burst=True)
    finally:
        use_state(None)
    assert CALLS == [77]


def test_warm_job_dedup(state):
    assert warming.enqueue_warm(state, 5) is True
    assert warming.enqueue_warm(state, 5) is False
    assert warming.enqueue_warm(state, 6) is True
    assert state.queue("warm").count == 2


def test_anonymous_requests_do_not_warm(client, state):
    client.get("/healthz")
    assert state.queue("warm").count == 0
