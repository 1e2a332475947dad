"""Warming: when a user comes back after being idle (their keys expired), one job loads
every read path for them on the ``warm`` queue, so their next requests hit the cache.

The request that noticed the return is still answered correctly (read-through fill or
the Postgres fallback); the job only saves the *following* requests a miss. It is
deduplicated per user (a fixed job id with ``unique=True``; ``result_ttl=0`` frees the id
when it finishes) and idempotent: each warmer is a version-checked fill, so it never
writes a value computed under an outdated version.
"""

from __future__ import annotations

import logging

from jobs.context import get_state
from jobs.paths import READ_PATHS

log = logging.getLogger(__name__)

def warm_user(user_id: int) -> list[str]:
    """RQ task: fill every read path of ``user_id``; returns the paths warmed."""
    state = get_state()
    warmed = []
    for path in READ_PATHS.values():  # each path's own warm (cache/<path>.py)
        try:
            path.warm(state, user_id)
            warmed.append(path.name)
        except Exception:  # noqa: BLE001 - one path failing must not stop the others
            log.warning("warming %s for user %s failed", path.name, user_id, exc_info=True)
    return warmed
