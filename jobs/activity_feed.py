"""RQ tasks of the activity feed: an event's item, fan-out in chunks, daily retention.

Every task is idempotent, so RQ's retries (3, with the delays of
``ACTIVITY_RETRY_INTERVALS``; they need a worker running the scheduler, as
``flask --app service worker`` does) never make an item twice: an event's item is unique
by ``source_event_id``, a fan-out item by (user, created_at, type, title).
"""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from typing import Any

from rq import Retry, get_current_job
from rq.exceptions import DuplicateJobError

from jobs.context import get_state
from service import activity_feed_ops as ops
from service.bootstrap import AppState


def _retry(app_state: AppState) -> Retry:
    return Retry(max=3, interval=list(app_state.settings.activity_retry_intervals) or 0)


def _queue(app_state: AppState):
    return app_state.queue(app_state.settings.activity_queue)


def event_job_id(app_state: AppState, event_id: int) -> str:
    """One job per event and queue (the queue name keeps test runs and deployments that
    share a queue Redis apart)."""
    queue = re.sub(r"[^A-Za-z0-9_-]", "_", _queue(app_state).name)
    return f"{queue}-activity-event-{event_id}"


def enqueue_activity_for_event(app_state: AppState, event_id: int) -> str:
    """Queue the creation of an event's activity; raises ``RedisError`` if the queue is
    down. One job per event (a second enqueue of the same event is a no-op)."""
    job_id = event_job_id(app_state, event_id)
    try:
        job = _queue(app_state).enqueue(
            activity_for_event, event_id, job_id=job_id, unique=True, retry=_retry(app_state)
        )
    except DuplicateJobError:
        return job_id
    return job.id


def activity_for_event(event_id: int) -> int | None:
    return ops.activity_for_event(get_state(), event_id)


class QueueFull(Exception):
    """The activity queue holds ``ACTIVITY_QUEUE_MAX_DEPTH`` jobs or more: refuse new work
    rather than let a burst of fan-outs queue without bound."""

    def __init__(self, depth: int) -> None:
        super().__init__(f"{depth} jobs waiting")
        self.depth = depth


def enqueue_fan_out(
    app_state: AppState, user_ids: list[int], created_at: datetime, item: dict[str, Any]
) -> str:
    """Queue a fan-out (split into chunk jobs by the worker); returns its job id. Raises
    ``QueueFull`` when the activity queue is at its depth cap, ``RedisError`` when it is
    down."""
    queue = _queue(app_state)
    depth = queue.count
    if depth >= app_state.settings.activity_queue_max_depth:
        raise QueueFull(depth)
    job = queue.enqueue(
        fan_out, user_ids, created_at.isoformat(), item,
        job_id=f"fanout-{uuid.uuid4().hex}", retry=_retry(app_state),
    )
    return job.id


def fan_out(user_ids: list[int], created_at: str, item: dict[str, Any]) -> int:
    """Enqueue one ``deliver_chunk`` job per ``ACTIVITY_FANOUT_CHUNK`` users; returns how
    many chunks. Chunk job ids derive from this job's, so a retry does not duplicate them."""
    app_state = get_state()
    parent = get_current_job()
    parent_id = parent.id if parent is not None else f"fanout-{uuid.uuid4().hex}"
    size = max(1, app_state.settings.activity_fanout_chunk)
    chunks = [user_ids[i : i + size] for i in range(0, len(user_ids), size)]
    queue = _queue(app_state)
    for index, chunk in enumerate(chunks):
        try:
            queue.enqueue(
                deliver_chunk, chunk, created_at, item,
                job_id=f"{parent_id}-{index}", unique=True, retry=_retry(app_state),
            )
        except DuplicateJobError:
            continue
    return len(chunks)


def deliver_chunk(user_ids: list[int], created_at: str, item: dict[str, Any]) -> int:
    return ops.deliver(get_state(), user_ids, datetime.fromisoformat(created_at), item)


def run_retention() -> dict[str, int]:
    """Daily cleanup by the per-type retention policy; returns deleted counts per type."""
    return ops.cleanup(get_state()).deleted


def retention_periodic(app_state: AppState):
    """The scheduler's daily entry, at ``ACTIVITY_CLEANUP_CRON`` (default ``0 2 * * *``:
    02:00 UTC, the source document's crontab): enqueue ``run_retention`` on the activity
    queue."""
    from jobs.scheduler import Periodic

    def enqueue(s: AppState) -> None:
        _queue(s).enqueue(run_retention, retry=_retry(s), job_timeout=3600)

    return Periodic("activity-retention", 0, enqueue,
                    cron=app_state.settings.activity_cleanup_cron)
