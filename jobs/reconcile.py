"""Reconciliation: compare what Redis holds with Postgres, repair what differs, report it.

A scheduled job (every ``RECONCILE_INTERVAL`` seconds, ``jobs/scheduler.py``) checks a
random sample of ``RECONCILE_SAMPLE`` users per read path; ``flask --app service reconcile
--all`` checks every user (and, for the group feed, every group's live bitmap). Each
difference is logged, the user's path is rebuilt through its version-checked fill, and the
repairs are counted per read path in the queue Redis (persistent and shared by every
process), which ``/metrics`` exposes as ``cache_repairs_total{path}``.

A check compares only settled keys (``jobs/read_paths.py``), so writes in flight are never
counted: on a healthy system the repair count stays at zero, and any repair is a bug
signal (a lost apply that outlived the relay, a wrong op, a corrupted key).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from flask import Flask
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from jobs import read_paths
from jobs.read_paths import Difference
from service.bootstrap import AppState
from storage import rebuild as store

log = logging.getLogger(__name__)


@dataclass
class Result:
    checked: dict[str, int] = field(default_factory=dict)  # users (or groups) per path
    repairs: dict[str, int] = field(default_factory=dict)  # keys repaired per path
    differences: list[Difference] = field(default_factory=list)

    @property
    def total_repairs(self) -> int:
        return sum(self.repairs.values())


def repairs_key(state: AppState) -> str:
    return f"{state.settings.key_prefix}reconcile:repairs"


def reconcile(state: AppState, paths: Sequence[str] | None = None, sample: int | None = None,
              all_users: bool = False) -> Result:
    """Check ``sample`` random users per path (or every user with ``all_users``), repair
    what differs; returns what was checked and repaired."""
    result = Result()
    sample = state.settings.reconcile_sample if sample is None else sample
    for path in read_paths.get(paths):
        result.checked[path.name] = 0
        result.repairs[path.name] = 0
        if all_users:
            users: Iterable[int] = path.users(state)
        else:
            with state.db.session() as session:
                users = store.sample_user_ids(session, path.name, sample)
        for user_id in users:
            result.checked[path.name] += 1
            _repair(state, result, path.name, path.check(state, user_id),
                    lambda u=user_id, p=path: p.rebuild(state, u))
        if all_users and path.check_group is not None and path.rebuild_group is not None:
            for group_id in _groups(state):
                diffs = path.check_group(state, group_id)
                _repair(state, result, path.name, diffs,
                        lambda g=group_id, p=path: p.rebuild_group(state, g))  # type: ignore[misc]
    _record(state, result)
    level = logging.WARNING if result.total_repairs else logging.INFO
    log.log(level, "cache reconciliation: checked %s, repairs %s",
            result.checked, result.repairs)
    return result


def _groups(state: AppState) -> Iterator[int]:
    return read_paths.group_ids(state)


def _repair(state: AppState, result: Result, path: str, diffs: list[Difference],
            rebuild) -> None:
    if not diffs:
        return
    for diff in diffs:
        log.warning("cache repair: %s", diff)
    rebuild()
    result.repairs[path] += len(diffs)
    result.differences += diffs


def _record(state: AppState, result: Result) -> None:
    pipe = state.queue_redis.pipeline(transaction=False)
    for path, n in result.repairs.items():
        pipe.hincrby(repairs_key(state), path, n)  # 0 too: the label exists from the start
    pipe.execute()


def repairs_total(state: AppState) -> dict[str, int]:
    raw = state.queue_redis.hgetall(repairs_key(state))
    return {k.decode(): int(v) for k, v in raw.items()}


def periodic(state: AppState):  # -> jobs.scheduler.Periodic (imported late: no cycle)
    """The scheduler's reconciliation job (``jobs/scheduler.py`` EXTRA_JOBS)."""
    from jobs.scheduler import Periodic

    return Periodic("reconcile", state.settings.reconcile_interval,
                    lambda s: reconcile(s, sample=s.settings.reconcile_sample))


class RepairsCollector(Collector):
    """``cache_repairs_total{path}`` for ``/metrics``, read live from the queue Redis (the
    scheduler that repairs is another process than the web that is scraped)."""

    def __init__(self, app: Flask) -> None:
        self.app = app

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily("cache_repairs", "Cached keys reconciliation repaired",
                                     labels=["path"])
        try:
            totals = repairs_total(self.app.extensions["hc"])
        except Exception:  # noqa: BLE001 - a scrape must not fail because Redis is down
            totals = {}
        for path in read_paths.READ_PATHS:
            family.add_metric([path], totals.get(path, 0))
        yield family
