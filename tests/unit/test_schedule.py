"""The scheduler's cron arithmetic (jobs/scheduler.py): fixed times in UTC, strictly after."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from jobs.scheduler import last_run_at, next_run_after


def _utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)


def test_next_run_after_fixed_times():
    daily = "0 2 * * *"
    assert next_run_after(daily, _utc(2026, 12, 1, 1, 59, 59)) == _utc(2026, 12, 1, 2, 0)
    # Strictly after: at 02:00 exactly, the next one is tomorrow's.
    assert next_run_after(daily, _utc(2026, 12, 1, 2, 0)) == _utc(2026, 12, 2, 2, 0)
    assert next_run_after(daily, _utc(2026, 12, 1, 2, 0, 0, 1)) == _utc(2026, 12, 2, 2, 0)
    assert next_run_after(daily, _utc(2026, 12, 31, 23, 0)) == _utc(2027, 1, 1, 2, 0)
    assert next_run_after(daily, datetime(2026, 12, 1, 1, 0)) == _utc(2026, 12, 1, 2, 0)  # naive
    # The schedule is UTC: 03:30 at +02:00 is 01:30 UTC, before that day's run.
    plus2 = datetime(2026, 12, 1, 3, 30, tzinfo=timezone(timedelta(hours=2)))
    assert next_run_after(daily, plus2) == _utc(2026, 12, 1, 2, 0)
    assert next_run_after("*/15 * * * *", _utc(2026, 12, 1, 10, 7)) == _utc(2026, 12, 1, 10, 15)
    assert last_run_at(daily, _utc(2026, 12, 1, 2, 0)) == _utc(2026, 12, 1, 2, 0)
    assert last_run_at(daily, _utc(2026, 12, 1, 1, 59, 59)) == _utc(2026, 11, 30, 2, 0)
    with pytest.raises(ValueError):
        next_run_after("every day at 2", _utc(2026, 12, 1))
