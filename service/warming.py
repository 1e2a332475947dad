"""After each signed-in request: note the user's activity; enqueue a warm job when they
come back from being idle (see jobs/warm.py)."""

from __future__ import annotations

import logging
import re

from flask import Flask, g
from redis.exceptions import RedisError
from rq.exceptions import DuplicateJobError

from cache.idle_marks import ActivityTracker
from service.bootstrap import AppState

log = logging.getLogger(__name__)


def init_app(app: Flask) -> None:
    state = app.extensions["hc"]
    tracker = ActivityTracker(state.cache)
    app.extensions["hc.activity"] = tracker

    @app.after_request
    def _note_activity(response):
        user = g.get("user")
        if user is None or response.status_code >= 500 or not state.cache.enabled:
            return response
        if tracker.touch(user.id):
            try:
                enqueue_warm(state, user.id)
            except RedisError:
                log.warning("could not enqueue a warm job (queue Redis down)")
        return response


WARM_JOB = "jobs.warm.warm_user"  # enqueued by name: the web never imports jobs


def warm_job_id(state: AppState, user_id: int) -> str:
    # RQ job ids allow only letters, digits, '_' and '-'.
    prefix = re.sub(r"[^A-Za-z0-9_-]", "_", state.settings.key_prefix)
    return f"{prefix}warm-u{user_id}"


def enqueue_warm(state: AppState, user_id: int) -> bool:
    """Enqueue the user's warm job unless one is already queued or running."""
    try:
        state.queue("warm").enqueue(
            WARM_JOB,
            user_id,
            job_id=warm_job_id(state, user_id),
            unique=True,
            result_ttl=0,
            failure_ttl=3600,
            job_timeout=120,
        )
    except DuplicateJobError:
        return False
    return True
