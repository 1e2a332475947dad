"""The scheduler process: runs periodic jobs, each under a Redis lock so that two
schedulers (a rolling deploy, an operator's mistake) never run one job twice at once.

Two kinds of job. An interval job runs every ``interval`` seconds from the process's
start. A cron job (``cron`` set, a 5-field expression in UTC, e.g. ``"0 2 * * *"``) runs
at the wall-clock times the expression names, whenever the process started; an
occurrence that passes while no scheduler runs is skipped, as cron skips it.
``next_run_after`` is the pure schedule and ``tick`` one pass of the loop, both taking
the time as an argument so tests use fixed times.

Jobs run inline in the scheduler (they are short, bounded batches); anything long is
enqueued to RQ by the job itself.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from croniter import croniter

from cache.lease import Lease
from cache.outbox import relay_outbox
from jobs import activity_feed, community_feed, reconcile
from jobs.periodic import Periodic
from service.bootstrap import AppState
from service.error_tracking import checkin

log = logging.getLogger(__name__)


def next_run_after(cron: str, after: datetime) -> datetime:
    """The first time strictly after ``after`` that ``cron`` names, in UTC (a naive
    ``after`` is taken as UTC). Raises ``ValueError`` for a bad expression."""
    if not croniter.is_valid(cron):
        raise ValueError(f"not a cron expression: {cron!r}")
    if after.tzinfo is None:
        after = after.replace(tzinfo=UTC)
    return croniter(cron, after.astimezone(UTC)).get_next(datetime)


def last_run_at(cron: str, at: datetime) -> datetime:
    """The latest time at or before ``at`` that ``cron`` names, in UTC."""
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    return croniter(cron, at.astimezone(UTC) + timedelta(microseconds=1)).get_prev(datetime)


def wall_now() -> datetime:
    return datetime.now(UTC)


def run_once(state: AppState, job: Periodic, occurrence: datetime | None = None) -> bool:
    """Run ``job`` unless another scheduler ran it this interval (a cron job: this
    occurrence, by default the latest one up to now) or is running it now.

    Two keys: a cadence mark (an interval job's expires after the interval: at most one
    run per interval across schedulers; a cron job's names its occurrence and lives until
    the next one) and a run lock held for the run (no overlap however long it takes).
    Returns True if it ran here.
    """
    base = f"{state.settings.key_prefix}scheduler:{job.name}"
    if job.cron is not None:
        occurrence = occurrence or last_run_at(job.cron, wall_now())
        gap = next_run_after(job.cron, occurrence) - occurrence
        cadence = state.queue_redis.set(
            f"{base}:cadence:{int(occurrence.timestamp())}", "1", nx=True,
            px=max(60_000, int(gap.total_seconds() * 1000)),
        )
    else:
        cadence = state.queue_redis.set(
            f"{base}:cadence", "1", nx=True, px=max(1, int(job.interval * 1000 * 0.9))
        )
    if not cadence:
        return False
    lock = Lease(f"{base}:lock", int(max(job.interval * 10, 600) * 1000))
    if not lock.take(state.queue_redis):
        return False
    try:
        with checkin(job.name, job.interval, job.cron):  # Sentry Crons, when SENTRY_DSN is set
            job.run(state)
    except Exception:  # noqa: BLE001 - one failing job must not stop the scheduler
        log.exception("scheduled job %s failed", job.name)
    finally:
        lock.release(state.queue_redis)
    return True


def default_jobs(state: AppState) -> list[Periodic]:

    def relay_job(s: AppState) -> None:
        relay_outbox(s.db, s.applier)

    jobs = [Periodic("outbox-relay", state.settings.outbox_relay_interval, relay_job)]
    for extra in EXTRA_JOBS:
        jobs.append(extra(state))
    return jobs


# Read paths add their periodic jobs here (factories taking the state).
EXTRA_JOBS: list[Callable[[AppState], Periodic]] = [
    activity_feed.retention_periodic,
    community_feed.trending_job,
    reconcile.periodic,
]


def tick(state: AppState, jobs: list[Periodic], monotonic: float, wall: datetime
         ) -> list[str]:
    """One pass of the loop at these times: run every job that is due; returns the names
    of the jobs run here. A cron job's first pass only schedules it (its next occurrence
    after ``wall``), so starting the scheduler never runs a cron job early."""
    ran = []
    for job in jobs:
        if job.cron is not None:
            if job.due is None:
                job.due = next_run_after(job.cron, wall)
            elif wall >= job.due:
                # The latest occurrence (one a stalled process overslept counts once), so
                # every scheduler names it alike and only one of them runs it.
                occurrence = last_run_at(job.cron, wall)
                job.due = next_run_after(job.cron, wall)
                if run_once(state, job, occurrence):
                    ran.append(job.name)
        elif monotonic >= job.next_at:
            job.next_at = monotonic + job.interval
            if run_once(state, job):
                ran.append(job.name)
    return ran


def _describe(job: Periodic) -> str:
    return f"{job.name}@'{job.cron}' UTC" if job.cron else f"{job.name}/{job.interval}s"


def run_forever(state: AppState, jobs: list[Periodic] | None = None) -> None:
    """Loop until SIGTERM/SIGINT, running each job at its interval or cron times."""
    jobs = jobs if jobs is not None else default_jobs(state)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    log.info("scheduler running: %s", ", ".join(_describe(j) for j in jobs))
    while not stop.is_set():
        tick(state, jobs, time.monotonic(), wall_now())
        stop.wait(0.5)
    log.info("scheduler stopped")
