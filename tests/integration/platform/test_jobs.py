"""Job plumbing: failed jobs (list, metrics, requeue, delete), the scheduler's locks, and a
worker's graceful stop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import redis
from rq import SimpleWorker

from jobs.scheduler import Periodic, run_once, tick
from service import failed_jobs as failed
from tests.support import ROOT as PROJECT_ROOT
from tests.support import job_fixtures

ROOT = PROJECT_ROOT


def run_burst(state) -> None:
    SimpleWorker(state.queues(), connection=state.queue_redis).work(burst=True)


def test_failed_jobs_listed_counted_requeued_deleted(app, state, client):
    queue = state.queue("default")
    job = queue.enqueue(job_fixtures.boom, "kaboom")
    run_burst(state)
    listed = failed.list_failed(state.queues())
    assert [(j.id, j.func) for j in listed] == [(job.id, "tests.support.job_fixtures.boom")]
    assert "kaboom" in listed[0].error
    metrics = client.get("/metrics").get_data(as_text=True)
    expected = f'rq_failed_jobs{{job="tests.support.job_fixtures.boom",queue="{queue.name}"}} 1.0'
    assert expected in metrics

    runner = app.test_cli_runner()
    out = runner.invoke(args=["failed-jobs"]).output
    assert job.id in out and "1 failed job(s)" in out
    assert "requeued 1" in runner.invoke(args=["failed-jobs", "--requeue", job.id]).output
    assert queue.count == 1
    run_burst(state)  # fails again
    assert "deleted 1" in runner.invoke(args=["failed-jobs", "--delete-all"]).output
    assert failed.list_failed(state.queues()) == []
    assert runner.invoke(args=["failed-jobs", "--requeue", "nope"]).exit_code != 0


def test_two_schedulers_never_double_run(state):
    runs = []
    started = threading.Barrier(2)

    def job(_state):
        runs.append(1)
        time.sleep(0.3)

    def scheduler():
        started.wait()
        run_once(state, Periodic("t", 60, job))

    threads = [threading.Thread(target=scheduler) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert runs == [1]
    # Within the same interval, no scheduler runs it again.
    assert run_once(state, Periodic("t", 60, job)) is False
    assert runs == [1]


def test_scheduler_job_failure_does_not_escape(state):
    def broken(_state):
        raise RuntimeError("broken job")

    assert run_once(state, Periodic("broken", 60, broken)) is True


def _utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)


def test_cron_job_runs_at_its_times_not_from_process_start(state):
    runs: list[int] = []
    job = Periodic("cron-t", 0, lambda _s: runs.append(1), cron="0 2 * * *")
    other = Periodic("cron-t", 0, lambda _s: runs.append(2), cron="0 2 * * *")  # 2nd scheduler
    # Started at 01:00: nothing runs at start (an interval job would have run now).
    steps = [
        (_utc(2026, 12, 1, 1, 0), []),
        (_utc(2026, 12, 1, 1, 59, 59), []),
        (_utc(2026, 12, 1, 2, 0, 0, 300_000), ["cron-t"]),  # the 02:00 occurrence
        (_utc(2026, 12, 1, 2, 0, 30), []),
        (_utc(2026, 12, 1, 14, 0), []),
        (_utc(2026, 12, 2, 1, 59), []),
        (_utc(2026, 12, 2, 2, 0, 1), ["cron-t"]),
    ]
    for mono, (wall, expected) in enumerate(steps):
        assert tick(state, [job], float(mono), wall) == expected, wall
        tick(state, [other], float(mono), wall)  # the same occurrence: never a second run
    assert runs == [1, 1]
    assert job.due == _utc(2026, 12, 3, 2, 0)


def test_sigterm_worker_finishes_current_job_once(settings, state, tmp_path):
    env = {
        **os.environ,
        "DATABASE_URL": settings.database_url,
        "REDIS_URL": settings.redis_url,
        "CACHE_KEY_PREFIX": settings.key_prefix,
        "RQ_QUEUE_PREFIX": settings.queue_prefix,
        "JWT_SECRET": settings.jwt_secret,
    }
    mark = f"{settings.key_prefix}marks"
    job = state.queue("default").enqueue(job_fixtures.record, settings.redis_url, mark, 1.5)
    flask = str(Path(sys.executable).with_name("flask"))
    worker = subprocess.Popen([flask, "--app", "service", "worker"], cwd=ROOT, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis.from_url(settings.redis_url)
    try:
        deadline = time.monotonic() + 30
        while client.llen(mark) == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert client.llen(mark) == 1, "job did not start"
        worker.send_signal(signal.SIGTERM)  # warm shutdown: the running job finishes
        assert worker.wait(30) == 0
        assert client.lrange(mark, 0, -1) == [b"start", b"end"]
        job.refresh()
        assert job.get_status() == "finished"
        assert state.queue("default").count == 0
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
        client.close()
