"""Activity feed work off the request: async ingestion on RQ (with retries), fan-out in
chunks, the retention / archive / backfill commands and the daily scheduled cleanup."""

from __future__ import annotations

import pytest
from rq import SimpleWorker
from rq.job import Job
from sqlalchemy import text

from jobs.context import use_state
from service import activity_feed_ops as ops
from service import create_app
from service.activity_feed_ops import event_job_id
from tests.support.activity_feed_truth import api_summary, make_item, truth_summary

FEED = "/api/events/activity-feed/"


def run_jobs(state) -> None:
    """Run every queued job in-process until the queues are empty."""
    use_state(state)
    try:
        SimpleWorker(state.queues(), connection=state.queue_redis).work(
            burst=True, logging_level="WARNING"
        )
    finally:
        use_state(None)


@pytest.fixture
def async_app(settings):
    app = create_app({"SETTINGS": settings.replace(use_async_activity_feed=True,
                                                   activity_retry_intervals=(0, 0, 0),
                                                   activity_fanout_chunk=3),
                      "TESTING": True})
    yield app
    app.extensions["hc"].close()


def _items(state, user_id: int) -> int:
    with state.db.session() as s:
        return s.execute(text("SELECT count(*) FROM activities WHERE user_id = :u"),
                         {"u": user_id}).scalar_one()


def test_async_event_item_is_made_by_a_worker(async_app, admin_headers, auth):
    client, state = async_app.test_client(), async_app.extensions["hc"]
    api_summary(client, auth(5))  # cached while empty
    r = client.post("/api/events/", json={"user_id": 5, "event_type": "milestone",
                                          "title": "100 days"}, headers=admin_headers)
    assert r.status_code == 201 and r.get_json()["activity_id"] is None
    assert _items(state, 5) == 0
    run_jobs(state)
    assert _items(state, 5) == 1
    assert api_summary(client, auth(5)) == truth_summary(state, 5)
    assert api_summary(client, auth(5))["unread_count"] == 1


def test_async_job_is_retried_then_succeeds(async_app, admin_headers, monkeypatch):
    client, state = async_app.test_client(), async_app.extensions["hc"]
    real, calls = ops.activity_for_event, []

    def flaky(app_state, event_id):
        calls.append(event_id)
        if len(calls) < 3:
            raise RuntimeError("database hiccup")
        return real(app_state, event_id)

    monkeypatch.setattr(ops, "activity_for_event", flaky)
    r = client.post("/api/events/", json={"user_id": 6, "event_type": "event", "title": "x"},
                    headers=admin_headers)
    run_jobs(state)
    assert len(calls) == 3 and _items(state, 6) == 1
    job = Job.fetch(event_job_id(state, r.get_json()["id"]), connection=state.queue_redis)
    assert job.get_status() == "finished" and job.retries_left == 1


def test_retry_waits_for_the_configured_delay(settings, admin_headers, monkeypatch):
    app = create_app({"SETTINGS": settings.replace(use_async_activity_feed=True),
                      "TESTING": True})
    state = app.extensions["hc"]
    try:
        monkeypatch.setattr(ops, "activity_for_event",
                            lambda *_: (_ for _ in ()).throw(RuntimeError("down")))
        r = app.test_client().post("/api/events/", headers=admin_headers,
                                   json={"user_id": 6, "event_type": "event", "title": "x"})
        run_jobs(state)
        job_id = event_job_id(state, r.get_json()["id"])
        queue = state.queue(settings.activity_queue)
        assert job_id in queue.scheduled_job_registry.get_job_ids()  # back in 10 s
        job = Job.fetch(job_id, connection=state.queue_redis)
        assert job.retries_left == 2 and job.retry_intervals == [10, 30, 60]
    finally:
        state.close()


def test_queue_down_makes_the_item_in_the_request(settings, admin_headers):
    app = create_app({"SETTINGS": settings.replace(use_async_activity_feed=True,
                                                   rq_redis_url="redis://127.0.0.1:1/0"),
                      "TESTING": True})
    try:
        r = app.test_client().post("/api/events/", headers=admin_headers,
                                   json={"user_id": 6, "event_type": "event", "title": "x"})
        assert r.status_code == 201 and r.get_json()["activity_id"] > 0
        r = app.test_client().post(FEED + "items/", headers=admin_headers,
                                   json={"user_ids": [1], "activity_type": "milestone",
                                         "title": "t"})
        assert r.status_code == 503 and r.headers["Retry-After"]
    finally:
        app.extensions["hc"].close()


def test_fan_out_in_chunks_once_per_user(async_app, admin_headers, auth):
    client, state = async_app.test_client(), async_app.extensions["hc"]
    users = list(range(100, 110))
    api_summary(client, auth(100))  # cached before the fan-out
    r = client.post(FEED + "items/", headers=admin_headers,
                    json={"user_ids": users + [100, 101], "activity_type": "fast_reminder",
                          "title": "Fast tomorrow", "data": {"fast": 1}})
    assert r.status_code == 202
    body = r.get_json()
    assert body["user_count"] == 10 and body["job_id"]
    run_jobs(state)
    chunks = [Job.fetch(f"{body['job_id']}-{i}", connection=state.queue_redis)
              for i in range(4)]
    assert [len(job.args[0]) for job in chunks] == [3, 3, 3, 1]
    assert all(_items(state, u) == 1 for u in users)
    # A chunk that runs again (a retry after a crash) makes no second copy.
    from jobs.activity_feed import deliver_chunk

    state.queue(state.settings.activity_queue).enqueue(deliver_chunk, *chunks[0].args)
    run_jobs(state)
    assert all(_items(state, u) == 1 for u in users)
    assert api_summary(client, auth(100)) == truth_summary(state, 100)
    item = client.get(FEED, headers=auth(104)).get_json()["results"][0]
    assert item["activity_type_display"] == "Fast Reminder" and item["data"] == {"fast": 1}


# --- operator commands ----------------------------------------------------------------------


def _seed_ages(state) -> None:
    for user in (21, 22):
        make_item(state, user, "fast_reminder", days_ago=40)  # expired (30)
        make_item(state, user, "fast_reminder", days_ago=10)
        make_item(state, user, "milestone", days_ago=400)  # expired (365)
        make_item(state, user, "milestone", days_ago=100)
        make_item(state, user, "event", days_ago=200)  # expired (180)


def test_cleanup_command(app, client, auth, state):
    _seed_ages(state)
    api_summary(client, auth(21))  # cached: cleanup must keep it exact
    runner = app.test_cli_runner()
    out = runner.invoke(args=["cleanup-activity-feeds", "--dry-run"]).output
    assert "Would delete 6 activity items" in out and "fast_reminder: 2" in out
    assert _items(state, 21) == 5
    out = runner.invoke(args=["cleanup-activity-feeds", "--activity-type", "milestone"]).output
    assert "Deleted 2 activity items of 2 users" in out
    assert api_summary(client, auth(21)) == truth_summary(state, 21)
    out = runner.invoke(args=["cleanup-activity-feeds"]).output
    assert "Deleted 4 activity items" in out
    assert _items(state, 21) == 2 and _items(state, 22) == 2
    assert api_summary(client, auth(21)) == truth_summary(state, 21)
    out = runner.invoke(args=["cleanup-activity-feeds", "--older-than-days", "50"]).output
    assert "Deleted 2 activity items" in out
    assert api_summary(client, auth(22)) == truth_summary(state, 22)
    bad = runner.invoke(args=["cleanup-activity-feeds", "--activity-type", "party"])
    assert bad.exit_code != 0


def test_archive_command(app, client, auth, state):
    _seed_ages(state)
    api_summary(client, auth(21))
    out = app.test_cli_runner().invoke(
        args=["archive-activity-feeds", "--older-than-days", "50"]).output
    assert "Archived 6 activity items of 2 users" in out
    with state.db.session() as s:
        assert s.execute(text("SELECT count(*) FROM activities_archive")).scalar_one() == 6
    assert _items(state, 21) == 2
    assert api_summary(client, auth(21)) == truth_summary(state, 21)
    bad = app.test_cli_runner().invoke(args=["archive-activity-feeds", "--older-than-days", "0"])
    assert bad.exit_code != 0


def test_archive_command_defaults_to_365_days(app, client, auth, state):
    _seed_ages(state)
    for user in (21, 22):
        make_item(state, user, "event", days_ago=364)
        make_item(state, user, "event", days_ago=366)
    out = app.test_cli_runner().invoke(args=["archive-activity-feeds"]).output
    # Per user: the 400-day milestone and the 366-day event; the 364-day one stays.
    assert "Archived 4 activity items of 2 users" in out
    with state.db.session() as s:
        assert s.execute(text("SELECT count(*) FROM activities_archive")).scalar_one() == 4
    assert _items(state, 21) == 5
    assert api_summary(client, auth(21)) == truth_summary(state, 21)


def test_populate_command(app, client, auth, state):
    with state.db.session() as s:
        for user, days in ((31, 1), (31, 5), (32, 2), (32, 60)):
            s.execute(text("INSERT INTO events (user_id, event_type, title, created_at)"
                           " VALUES (:u, 'fast_join', 'j', now() - make_interval(days => :d))"),
                      {"u": user, "d": days})
        s.commit()
    api_summary(client, auth(31))
    runner = app.test_cli_runner()
    out = runner.invoke(args=["populate-activity-feeds", "--dry-run"]).output
    assert "Would create 3 activity items" in out and _items(state, 31) == 0
    out = runner.invoke(args=["populate-activity-feeds", "--user-id", "31"]).output
    assert "Created 2 activity items for 1 users" in out
    out = runner.invoke(args=["populate-activity-feeds", "--days-back", "90"]).output
    assert "Created 2 activity items for 1 users" in out
    out = runner.invoke(args=["populate-activity-feeds", "--days-back", "90"]).output
    assert "Created 0 activity items" in out
    assert api_summary(client, auth(31)) == truth_summary(state, 31)
    assert runner.invoke(args=["populate-activity-feeds", "--days-back", "0"]).exit_code != 0


def test_cleanup_is_scheduled_daily_at_2am(state):
    from jobs.scheduler import default_jobs, run_once

    job = next(j for j in default_jobs(state) if j.name == "activity-retention")
    assert job.cron == "0 2 * * *" == state.settings.activity_cleanup_cron
    _seed_ages(state)
    assert run_once(state, job) is True
    assert run_once(state, job) is False  # once per occurrence, however many schedulers
    run_jobs(state)
    assert _items(state, 21) == 2
    assert truth_summary(state, 21)["activity_types"] == {"fast_reminder": 1, "milestone": 1}


def test_cleanup_cron_setting(settings):
    from jobs.activity_feed import retention_periodic
    from service.settings import Settings

    assert Settings.from_env({}).activity_cleanup_cron == "0 2 * * *"
    assert Settings.from_env({"ACTIVITY_CLEANUP_CRON": " 30  3 * * 1 "}
                             ).activity_cleanup_cron == "30 3 * * 1"
    for bad in ("", "0 2 * *", "61 2 * * *", "0 2 * * * *", "daily"):
        with pytest.raises(ValueError, match="ACTIVITY_CLEANUP_CRON"):
            Settings.from_env({"ACTIVITY_CLEANUP_CRON": bad})
    app = create_app({"SETTINGS": settings.replace(activity_cleanup_cron="15 4 * * *"),
                      "TESTING": True})
    try:
        assert retention_periodic(app.extensions["hc"]).cron == "15 4 * * *"
    finally:
        app.extensions["hc"].close()
