"""Reconciliation: compare what Redis holds with Postgres, repair what differs, report it.

A scheduled job (every ``RECONCILE_INTERVAL`` seconds, ``jobs/scheduler.py``) checks a
random sample of ``RECONCILE_SAMPLE`` users per read path; ``flask --app service reconcile
--all`` checks every user (and, for the group feed, every group's live bitmap). Each
difference is logged, the user's path is rebuilt through its version-checked fill, and the
repairs are counted per read path in the queue Redis (persistent and shared by every
process), which ``/metrics`` exposes as ``cache_repairs_total{path}``.

A check compares only settled keys (``check`` in ``cache/<path>.py``, see
``cache/checks.py``), so writes in flight are never counted: on a healthy system the
repair count stays at zero, and any repair is a bug signal (a lost apply that outlived
the relay, a wrong op, a corrupted key).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from jobs import paths as read_paths
from jobs.paths import Difference
from jobs.periodic import Periodic
from service.bootstrap import AppState
from service.repairs import record_repairs
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
            with state.db.read() as session:
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
    record_repairs(state, result.repairs)
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


def periodic(state: AppState):  # -> jobs.scheduler.Periodic (imported late: no cycle)
    """The scheduler's reconciliation job (``jobs/scheduler.py`` EXTRA_JOBS)."""
    return Periodic("reconcile", state.settings.reconcile_interval,
                    lambda s: reconcile(s, sample=s.settings.reconcile_sample))
