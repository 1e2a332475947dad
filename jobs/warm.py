"""Warming: when a user comes back after being idle (their keys expired), one job loads
every read path for them on the ``warm`` queue, so their next requests hit the cache.

The request that noticed the return is still answered correctly (read-through fill or
the Postgres fallback); the job only saves the *following* requests a miss. It is
deduplicated per user (a fixed job id with ``unique=True``; ``result_ttl=0`` frees the id
when it finishes) and idempotent: each warmer is a version-checked fill, so it never
writes a value computed under an outdated version.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable

from jobs.context import get_state
from service.bootstrap import AppState

log = logging.getLogger(__name__)

# "module:function" of each read path's warmer: fn(state, user_id) -> None.
WARMERS: list[str] = [
    "jobs.read_paths:warm_views",
    "jobs.read_paths:warm_activity",
    "jobs.read_paths:warm_feeds",
    "jobs.read_paths:warm_reels",
]


def _warmers() -> list[tuple[str, Callable[[AppState, int], None]]]:
    out = []
    for spec in WARMERS:
        module, _, name = spec.partition(":")
        out.append((spec, getattr(importlib.import_module(module), name)))
    return out


def warm_user(user_id: int) -> list[str]:
    """RQ task: fill every read path of ``user_id``; returns the paths warmed."""
    state = get_state()
    warmed = []
    for spec, warm in _warmers():
        try:
            warm(state, user_id)
            warmed.append(spec)
        except Exception:  # noqa: BLE001 - one path failing must not stop the others
            log.warning("warming %s for user %s failed", spec, user_id, exc_info=True)
    return warmed
