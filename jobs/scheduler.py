"""The scheduler process: runs periodic jobs, each under a Redis lock so that two
schedulers (a rolling deploy, an operator's mistake) never run one job twice at once.

Jobs run inline in the scheduler (they are short, bounded batches); anything long is
enqueued to RQ by the job itself.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import redis

from jobs import activity_feed, community_feed, reconcile
from service.bootstrap import AppState
from service.error_tracking import checkin

log = logging.getLogger(__name__)

RELEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


@dataclass
class Periodic:
    name: str
    interval: float  # seconds
    run: Callable[[AppState], object]
    next_at: float = 0.0


class RedisLock:
    """A lock with a token and a TTL (so a crashed holder frees it)."""

    def __init__(self, client: redis.Redis, name: str, ttl: float) -> None:
        self.client = client
        self.key = f"{name}:lock"
        self.ttl_ms = int(ttl * 1000)
        self.token = uuid.uuid4().hex

    def acquire(self) -> bool:
        return bool(self.client.set(self.key, self.token, nx=True, px=self.ttl_ms))

    def release(self) -> None:
        self.client.eval(RELEASE_LUA, 1, self.key, self.token)


def run_once(state: AppState, job: Periodic) -> bool:
    """Run ``job`` unless another scheduler ran it this interval or is running it now.

    Two keys: a cadence mark (expires after the interval: at most one run per interval
    across schedulers) and a run lock held for the run (no overlap however long it takes).
    Returns True if it ran here.
    """
    base = f"{state.settings.key_prefix}scheduler:{job.name}"
    cadence = state.queue_redis.set(
        f"{base}:cadence", "1", nx=True, px=max(1, int(job.interval * 1000 * 0.9))
    )
    if not cadence:
        return False
    lock = RedisLock(state.queue_redis, base, ttl=max(job.interval * 10, 600))
    if not lock.acquire():
        return False
    try:
        with checkin(job.name, job.interval):  # Sentry Crons, when SENTRY_DSN is set
            job.run(state)
    except Exception:  # noqa: BLE001 - one failing job must not stop the scheduler
        log.exception("scheduled job %s failed", job.name)
    finally:
        lock.release()
    return True


def default_jobs(state: AppState) -> list[Periodic]:
    from jobs import relay

    def relay_job(s: AppState) -> None:
        relay.relay_outbox(s.db, s.applier)

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


def run_forever(state: AppState, jobs: list[Periodic] | None = None) -> None:
    """Loop until SIGTERM/SIGINT, running each job at its interval."""
    jobs = jobs if jobs is not None else default_jobs(state)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    log.info("scheduler running: %s", ", ".join(f"{j.name}/{j.interval}s" for j in jobs))
    while not stop.is_set():
        now = time.monotonic()
        for job in jobs:
            if now >= job.next_at:
                job.next_at = now + job.interval
                run_once(state, job)
        stop.wait(0.5)
    log.info("scheduler stopped")
