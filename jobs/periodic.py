"""A job the scheduler runs: every ``interval`` seconds, or at the times of a cron
expression (see ``jobs/scheduler.py``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from service.bootstrap import AppState


@dataclass
class Periodic:
    name: str
    interval: float  # seconds (interval jobs; ignored when ``cron`` is set)
    run: Callable[[AppState], object]
    next_at: float = 0.0  # interval jobs: monotonic time of the next run
    cron: str | None = None  # cron jobs: 5-field expression, UTC
    due: datetime | None = None  # cron jobs: the next occurrence to run
