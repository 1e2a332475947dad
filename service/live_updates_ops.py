"""Live updates' use cases (API section 6) beside the routes in ``service/live_updates.py``:
queueing a group's fan-out (``jobs/live_updates.py`` runs it, enqueued by name) and the
job's work.

A new or deleted group item changes every member's unread count; the request applies the
change and queues one job per change (``cache.live_events.Publisher.fan_out_group``), whose
id is the group and the change's version, so the relay's repair (queueing it again for a
change its request applied) never runs one twice while its result is kept
(``FAN_OUT_RESULT_TTL``).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

from redis.exceptions import RedisError
from rq import Queue, Retry
from rq.exceptions import DuplicateJobError

if TYPE_CHECKING:  # the bootstrap builds a FanOutQueue: no import cycle at run time
    from service.bootstrap import AppState

log = logging.getLogger(__name__)

FAN_OUT_JOB = "jobs.live_updates.fan_out_group"
FAN_OUT_RETRY = (1, 5, 15)  # seconds between the retries of a failed fan-out
FAN_OUT_RESULT_TTL = 600  # seconds a finished job's id is kept (dedups the relay's repair)


def fan_out_job_id(queue: Queue, group_id: int, version: int) -> str:
    name = re.sub(r"[^A-Za-z0-9_-]", "_", queue.name)
    return f"{name}-live-group-{group_id}-v{version}"


class FanOutQueue:
    """``Publisher.enqueue_fan_out``: queue one job per (group, version); a job already
    queued (or finished within ``FAN_OUT_RESULT_TTL``) is not queued again. Never raises:
    with the queue down it logs once per call and the relay queues them later."""

    def __init__(self, queue: Queue) -> None:
        self.queue = queue

    def __call__(self, fan_outs: Sequence[tuple[int, int]]) -> None:
        for group_id, version in fan_outs:
            try:
                self.queue.enqueue(
                    FAN_OUT_JOB, group_id, version,
                    job_id=fan_out_job_id(self.queue, group_id, version), unique=True,
                    retry=Retry(max=len(FAN_OUT_RETRY), interval=list(FAN_OUT_RETRY)),
                    result_ttl=FAN_OUT_RESULT_TTL,
                )
            except DuplicateJobError:
                continue
            except RedisError as exc:
                log.warning("live fan-out not queued (the outbox relay queues it): %s", exc)
                return


def fan_out_group(app_state: AppState, group_id: int, version: int) -> int:
    """The job: every member of the group with a stream gets its unread count; returns
    how many events were appended."""
    publisher = app_state.applier.publisher
    if publisher is None:
        raise RuntimeError("live events are not wired (service.bootstrap)")
    return publisher.fan_out_group(group_id, version)
