"""RQ tasks of the activity feed: an event's item, fan-out in chunks, daily retention.

Every task is idempotent, so RQ's retries (3, with the delays of
``ACTIVITY_RETRY_INTERVALS``; they need a worker running the scheduler, as
``flask --app service worker`` does) never make an item twice: an event's item is unique
by ``source_event_id``, a fan-out item by (user, created_at, type, title).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from rq import get_current_job
from rq.exceptions import DuplicateJobError

from jobs.context import get_state
from jobs.periodic import Periodic
from service import activity_feed_ops as ops
from service.activity_feed_ops import activity_queue, activity_retry
from service.bootstrap import AppState


def activity_for_event(event_id: int) -> int | None:
    return ops.activity_for_event(get_state(), event_id)


def fan_out(user_ids: list[int], created_at: str, item: dict[str, Any]) -> int:
    """Enqueue one ``deliver_chunk`` job per ``ACTIVITY_FANOUT_CHUNK`` users; returns how
    many chunks. Chunk job ids derive from this job's, so a retry does not duplicate them."""
    app_state = get_state()
    parent = get_current_job()
    parent_id = parent.id if parent is not None else f"fanout-{uuid.uuid4().hex}"
    size = max(1, app_state.settings.activity_fanout_chunk)
    chunks = [user_ids[i : i + size] for i in range(0, len(user_ids), size)]
    queue = activity_queue(app_state)
    for index, chunk in enumerate(chunks):
        try:
            queue.enqueue(
                deliver_chunk, chunk, created_at, item,
                job_id=f"{parent_id}-{index}", unique=True, retry=activity_retry(app_state),
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
    def enqueue(s: AppState) -> None:
        activity_queue(s).enqueue(run_retention, retry=activity_retry(s), job_timeout=3600)

    return Periodic("activity-retention", 0, enqueue,
                    cron=app_state.settings.activity_cleanup_cron)
