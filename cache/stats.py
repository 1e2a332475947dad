"""Prometheus counters of the cache core, labelled by read path.

Outcomes: ``hit`` (answered from Redis), ``miss`` (key absent, rebuilt from Postgres),
``fallback`` (answered from Postgres without the cache: breaker open, Redis error, or a
concurrent fill held the lease), ``error`` (a Redis command failed).
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any

from prometheus_client import Counter, Gauge

CACHE_EVENTS = Counter(
    "cache_events_total", "Cache outcomes per read path", ["path", "outcome"]
)
REDIS_ERRORS = Counter("redis_errors_total", "Redis commands that failed", ["path"])
STALE_FILLS = Counter(
    "cache_stale_fills_total",
    "Fills discarded because a write bumped the version while they loaded",
    ["path"],
)
OUTBOX_APPLIED = Counter(
    "cache_outbox_applied_total", "Outbox changes applied to Redis", ["by"]
)
REDIS_CALLS = Counter("redis_round_trips_total", "Round trips to the cache Redis", ["path"])
# Per process; under gunicorn the scrape shows the highest of the live workers' values.
BREAKER_OPEN = Gauge(
    "cache_breaker_open",
    "1 while the cache breaker is open or probing (reads go to Postgres), else 0",
    multiprocess_mode="livemax",
)


# Labelled children, looked up once per label set: ``.labels()`` takes a lock and checks
# its values on every call, a few per request on the hot paths (issue 15's profile).
# Bounded, for labels a client could vary (an HTTP method); past the bound, ``.labels()``.
_CHILDREN: dict[tuple[Any, ...], Any] = {}
MAX_CHILDREN = 4096


def child(metric: Any, *values: str) -> Any:
    """``metric.labels(*values)``, remembered."""
    key = (id(metric), *values)
    found = _CHILDREN.get(key)
    if found is None:
        found = metric.labels(*values)
        if len(_CHILDREN) < MAX_CHILDREN:
            _CHILDREN[key] = found
    return found


def count(path: str, outcome: str, n: int = 1) -> None:
    """``n`` outcomes of ``path`` (one counter update however many)."""
    if n <= 0:
        return
    child(CACHE_EVENTS, path, outcome).inc(n)
    outcomes = _OUTCOMES.get()
    if outcomes is not None:
        entry = f"{path}:{outcome}"
        if n == 1:
            outcomes.append(entry)
        else:
            outcomes.extend([entry] * n)


# The outcomes of the current request, for its log line (a contextvar: per thread/task).
_OUTCOMES: ContextVar[list[str] | None] = ContextVar("cache_outcomes", default=None)


def begin_request() -> list[str]:
    outcomes: list[str] = []
    _OUTCOMES.set(outcomes)
    return outcomes


def end_request() -> list[str]:
    outcomes = _OUTCOMES.get() or []
    _OUTCOMES.set(None)
    return outcomes
