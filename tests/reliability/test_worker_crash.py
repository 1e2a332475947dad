"""Fault 8: a worker killed (SIGKILL, with its work horse) in the middle of a job: the job
is retried and its effect happens once.

The job is a real fan-out chunk (``jobs.activity_feed.deliver_chunk``) giving one activity
item to ``USERS`` users. RQ notices an abandoned job when its heartbeat expires (at least
60 s after the kill) at the next maintenance pass; the test moves that expiry into the
past and runs the registry cleanup the maintenance pass would run, instead of waiting.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from rq.registry import StartedJobRegistry
from sqlalchemy import text

from tests.support import ROOT as PROJECT_ROOT
from tests.support.auth import bearer
from tests.support.reliability import reliability_settings

ROOT = PROJECT_ROOT
USERS = list(range(10_001, 11_201))
TITLE = "reminder: fast starts at dawn"


def worker_env(settings) -> dict[str, str]:
    return {
        **os.environ,
        "DATABASE_URL": settings.database_url,
        "REDIS_URL": settings.redis_url,
        "RQ_REDIS_URL": settings.rq_redis_url,
        "CACHE_KEY_PREFIX": settings.key_prefix,
        "RQ_QUEUE_PREFIX": settings.queue_prefix,
        "JWT_SECRET": settings.jwt_secret,
        "ACTIVITY_FANOUT_CHUNK": str(len(USERS)),
        "ACTIVITY_RETRY_INTERVALS": "0",
        "LOG_LEVEL": "WARNING",
    }


def child_pids(pid: int) -> list[int]:
    """Live child processes of ``pid`` (from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return found


def items_per_user(app) -> dict[int, int]:
    with app.extensions["hc"].db.engine.connect() as conn:
        return dict(conn.execute(text(
            "SELECT user_id, count(*) FROM activities WHERE title = :t GROUP BY user_id"),
            {"t": TITLE}).all())


def test_killed_worker_job_retried_once(make_app, database_url, redis_url, queue_redis,
                                        recorder, tmp_path):
    settings = reliability_settings(database_url, redis_url, rq_redis_url=queue_redis.url,
                                    activity_fanout_chunk=len(USERS),
                                    activity_retry_intervals=(0,))
    app = make_app(settings)
    state = app.extensions["hc"]
    queue = state.queue(settings.activity_queue)
    r = app.test_client().post("/api/events/activity-feed/items/", headers=bearer(1, True),
                               json={"user_ids": USERS, "activity_type": "fast_reminder",
                                     "title": TITLE})
    assert r.status_code == 202, r.json
    flask = str(Path(sys.executable).with_name("flask"))
    env = worker_env(settings)
    started = StartedJobRegistry(queue=queue)

    # The chunk must be killed inside its transaction, however fast this machine runs it:
    # a SHARE lock on ``activities`` (reads pass, inserts wait) holds the job at its INSERT,
    # after it has locked its users' version rows. The test kills the worker only once a
    # backend is seen waiting on that lock, so the kill always lands mid-transaction.
    blocker = state.db.engine.connect()
    blocker.execute(text("LOCK TABLE activities IN SHARE MODE"))
    me = blocker.execute(text("SELECT pg_backend_pid()")).scalar_one()
    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        worker = subprocess.Popen([flask, "--app", "service", "worker"], cwd=ROOT, env=env,
                                  stdout=out, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    chunk_id = None
    at_kill: dict[str, object] = {}
    try:
        deadline = time.monotonic() + 60
        with state.db.engine.connect() as probe:
            while time.monotonic() < deadline and worker.poll() is None:
                # Only the chunk's INSERT: autovacuum of ``activities`` waits on the same
                # lock, and seeing it alone once let the kill land before the INSERT.
                waiting = probe.execute(text(
                    "SELECT pid, query, xact_start IS NOT NULL FROM pg_stat_activity"
                    " WHERE :me = ANY(pg_blocking_pids(pid))"
                    " AND backend_type = 'client backend'"
                    " AND regexp_replace(lower(query), '\\s+', ' ', 'g')"
                    " LIKE '%insert into activities%'"), {"me": me}).all()
                probe.rollback()
                running = [j for j in started.get_job_ids() if j.endswith("-0")]
                if waiting and running:
                    chunk_id = running[0]
                    pid, query, in_xact = waiting[0]
                    # What the kill will cut: a chunk mid-transaction, its INSERT waiting,
                    # holding the locks it took before it (its users' version rows).
                    at_kill = {
                        "backend_inserts_activities": "insert into activities" in " ".join(
                            query.lower().split()),
                        "in_transaction": in_xact,
                        "locks_held": probe.execute(text(
                            "SELECT count(*) FROM pg_locks WHERE pid = :p AND granted"),
                            {"p": pid}).scalar_one(),
                        "backend_pid": pid,
                    }
                    probe.rollback()
                    break
                time.sleep(0.01)
        failed = [queue.fetch_job(i) for i in queue.failed_job_registry.get_job_ids()]
        failed = [(j.id, (j.exc_info or "")[-300:]) for j in failed if j is not None]
        tail = log.read_text()[-1500:]
        assert chunk_id, f"the chunk job never reached its INSERT: {failed} {tail}"
    finally:
        # The work horse runs in a process group of its own (RQ calls setpgrp), so killing
        # the worker's group alone leaves it alive to commit the chunk. Kill the worker,
        # then every process it started (the horse is stuck at the lock until the blocker
        # lets go, so it cannot move in between): the machine died.
        children = child_pids(worker.pid)
        at_kill.update(worker_alive=worker.poll() is None, children_killed=len(children))
        os.killpg(worker.pid, signal.SIGKILL)
        for horse in children:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(horse, signal.SIGKILL)
        worker.wait(10)
        # Its backend, stuck in the lock wait, learns of the dead client only after the wait
        # ends; it can never commit (no COMMIT can arrive) and rolls back on the closed socket.
        blocker.rollback()
        blocker.close()
    with recorder.phase("worker killed mid-job") as phase:
        phase.notes.update(at_kill, worker_returncode=worker.returncode)
        assert at_kill["worker_alive"] and worker.returncode == -signal.SIGKILL, at_kill
        assert at_kill["children_killed"] >= 1, at_kill  # the horse among them
        assert at_kill["backend_inserts_activities"], at_kill
        assert at_kill["in_transaction"] and at_kill["locks_held"] > 0, at_kill
        # The killed chunk's backend ends without committing: wait for it to go.
        with state.db.engine.connect() as probe:
            deadline = time.monotonic() + 30
            while probe.execute(text("SELECT count(*) FROM pg_stat_activity WHERE pid = :p"),
                                {"p": at_kill["backend_pid"]}).scalar_one():
                probe.rollback()
                assert time.monotonic() < deadline, "the killed chunk's backend lingers"
                time.sleep(0.02)
        phase.notes["items_at_kill"] = sum(items_per_user(app).values())
        assert phase.notes["items_at_kill"] == 0, "the killed chunk's transaction committed"
        # What RQ's maintenance pass does once the dead worker's heartbeat has expired.
        for member in queue.connection.zrange(started.key, 0, -1):
            queue.connection.zadd(started.key, {member: 1})
        started.cleanup()
        phase.notes["requeued"] = chunk_id in queue.get_job_ids()
    assert phase.notes["requeued"], "the abandoned chunk was not retried"

    began = time.monotonic()
    subprocess.run([flask, "--app", "service", "worker", "--burst"], cwd=ROOT, env=env,
                   check=True, timeout=120, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    with recorder.phase("retry") as retry:
        retry.notes["retry_run_s"] = round(time.monotonic() - began, 2)
        counts = items_per_user(app)
        retry.notes["users_with_item"] = len(counts)
        retry.notes["max_items_per_user"] = max(counts.values(), default=0)
    assert counts == {u: 1 for u in USERS}
    job = queue.fetch_job(chunk_id)
    assert job is not None and job.get_status() == "finished"
    assert job.return_value() == len(USERS)  # the retry made every item: none were left
    # The cache agrees: a user's feed shows the item once.
    feed = app.test_client().get("/api/events/activity-feed/", headers=bearer(USERS[7])).json
    assert [i["title"] for i in feed["results"]].count(TITLE) == 1
