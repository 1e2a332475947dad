"""After each signed-in request: note the user's activity; enqueue a warm job when they
come back from being idle (see jobs/warm.py)."""

from __future__ import annotations

import logging

from flask import Flask, g
from redis.exceptions import RedisError

from cache.idle_marks import ActivityTracker

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
            from jobs.warm import enqueue_warm

            try:
                enqueue_warm(state, user.id)
            except RedisError:
                log.warning("could not enqueue a warm job (queue Redis down)")
        return response
