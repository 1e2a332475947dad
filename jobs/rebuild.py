"""Rebuild the cache from Postgres (``scripts/rebuild-cache``, ``flask --app service
rebuild-cache``): every read path or some, every user or one, or one group.

- Users are streamed from Postgres in id order (``storage/rebuild.py``), never listed from
  Redis; nothing here uses KEYS, and every Redis call stays within one user's (or one
  group's) hash slot, so it runs unchanged against Redis Cluster.
- Each user is refilled through the path's own version-checked fill (``rebuild`` in
  ``cache/<path>.py``, listed in ``jobs/paths.py``): safe beside live traffic, a fill
  computed under an outdated version is dropped.
- ``max_rate`` paces users per second so live traffic keeps the servers.
- Resumable: after each user the last id done is remembered per path in the queue Redis
  (persistent, unlike the LRU cache), flushed at most once a second and on Ctrl-C; a rerun
  continues after it (``restart`` ignores it). Finished paths are marked done until the
  whole run ends, when the checkpoints are cleared.
- ``dry_run`` only compares (``check``) and reports the differences; it writes nothing to
  the cache (its checkpoints are separate from a real run's).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from tqdm import tqdm

from cache.client import CacheUnavailable
from jobs import paths as read_paths
from jobs.paths import Difference, ReadPath
from service.bootstrap import AppState
from storage import rebuild as store

log = logging.getLogger(__name__)

DONE = "done"
MAX_KEPT_DIFFERENCES = 1000


@dataclass
class Options:
    paths: list[str] | None = None  # None = every read path
    user: int | None = None
    group: int | None = None
    dry_run: bool = False
    max_rate: float | None = None  # users per second
    restart: bool = False
    progress: bool = True


@dataclass
class Report:
    users: dict[str, int] = field(default_factory=dict)  # per path: users done this run
    differences: dict[str, int] = field(default_factory=dict)  # per path: keys differing
    examples: list[Difference] = field(default_factory=list)
    seconds: float = 0.0
    interrupted: bool = False

    @property
    def total_users(self) -> int:
        return sum(self.users.values())

    @property
    def rate(self) -> float:
        return self.total_users / self.seconds if self.seconds > 0 else 0.0


class Pacer:
    """At most ``rate`` calls of ``wait`` per second (no limit when ``rate`` is None)."""

    def __init__(self, rate: float | None) -> None:
        self.interval = 1.0 / rate if rate else 0.0
        self.next_at = time.monotonic()

    def wait(self) -> None:
        if not self.interval:
            return
        now = time.monotonic()
        if self.next_at > now:
            time.sleep(self.next_at - now)
        self.next_at = max(self.next_at, now) + self.interval


class Checkpoints:
    """The last user id done per path, in the queue Redis."""

    def __init__(self, state: AppState, dry_run: bool) -> None:
        self.redis = state.queue_redis
        mode = "dry-run" if dry_run else "rebuild"
        self.base = f"{state.settings.key_prefix}rebuild:checkpoint:{mode}"

    def key(self, path: str) -> str:
        return f"{self.base}:{path}"

    def get(self, path: str) -> int | str:
        raw = self.redis.get(self.key(path))
        if raw is None:
            return 0
        return DONE if raw == DONE.encode() else int(raw)

    def set(self, path: str, value: int | str) -> None:
        self.redis.set(self.key(path), value)

    def clear(self, paths: Iterable[str]) -> None:
        self.redis.delete(*[self.key(p) for p in paths])


RETRY_PAUSE_S = 0.5


def _work(path: ReadPath, dry_run: bool) -> Callable[[AppState, int], list[Difference]]:
    """One user's check (dry run) or rebuild, tried once more after a pause when Redis
    fails: one slow reply (the client's timeout is the web's, ~100 ms) must not stop a run
    over every user. A second failure stops the run, its checkpoint saved."""

    def once(state: AppState, user_id: int) -> list[Difference]:
        if dry_run:
            return path.check(state, user_id)
        path.rebuild(state, user_id)
        return []

    def work(state: AppState, user_id: int) -> list[Difference]:
        try:
            return once(state, user_id)
        except CacheUnavailable:
            log.warning("%s: Redis failed on user %d; trying once more", path.name, user_id)
            time.sleep(RETRY_PAUSE_S)
            return once(state, user_id)

    return work


def _note(report: Report, path: str, diffs: list[Difference]) -> None:
    report.differences[path] = report.differences.get(path, 0) + len(diffs)
    room = MAX_KEPT_DIFFERENCES - len(report.examples)
    report.examples += diffs[:max(room, 0)]


def run(state: AppState, options: Options,
        echo: Callable[[str], None] = lambda line: None) -> Report:
    """Rebuild (or with ``dry_run`` compare) what ``options`` selects; returns a report.
    Ctrl-C stops it cleanly (``report.interrupted``), with the checkpoint saved."""
    paths = read_paths.get(options.paths)
    report = Report()
    started = time.monotonic()
    try:
        if options.group is not None:
            _run_group(state, options, paths, report, echo)
        elif options.user is not None:
            for path in paths:
                diffs = _work(path, options.dry_run)(state, options.user)
                report.users[path.name] = 1
                _note(report, path.name, diffs)
                for diff in diffs:
                    echo(str(diff))
        else:
            _run_all(state, options, paths, report, echo)
    except KeyboardInterrupt:
        report.interrupted = True
    report.seconds = time.monotonic() - started
    return report


def _run_group(state: AppState, options: Options, paths: list[ReadPath], report: Report,
               echo: Callable[[str], None]) -> None:
    for path in paths:
        if path.check_group is None or path.rebuild_group is None:
            echo(f"{path.name}: no group-level state, skipped")
            continue
        if options.dry_run:
            diffs = path.check_group(state, options.group)  # type: ignore[arg-type]
        else:
            path.rebuild_group(state, options.group)  # type: ignore[arg-type]
            diffs = []
        report.users[path.name] = 0
        _note(report, path.name, diffs)
        for diff in diffs:
            echo(str(diff))


def _run_all(state: AppState, options: Options, paths: list[ReadPath], report: Report,
             echo: Callable[[str], None]) -> None:
    checkpoints = Checkpoints(state, options.dry_run)
    if options.restart:
        checkpoints.clear(p.name for p in paths)
    pacer = Pacer(options.max_rate)
    for path in paths:
        after = checkpoints.get(path.name)
        if after == DONE:
            echo(f"{path.name}: done in an earlier run (--restart to redo)")
            continue
        assert isinstance(after, int)
        if after:
            echo(f"{path.name}: resuming after user {after}")
        with state.db.read() as session:
            total = store.count_users(session, path.name, after)
        work = _work(path, options.dry_run)
        done, saved_at = after, time.monotonic()
        bar = tqdm(total=total, desc=path.name, unit="user", disable=not options.progress,
                   dynamic_ncols=True)
        try:
            for user_id in path.users(state, after):
                pacer.wait()
                diffs = work(state, user_id)
                _note(report, path.name, diffs)
                for diff in diffs:
                    echo(str(diff))
                done = user_id
                report.users[path.name] = report.users.get(path.name, 0) + 1
                bar.update(1)
                if time.monotonic() - saved_at >= 1.0:
                    checkpoints.set(path.name, done)
                    saved_at = time.monotonic()
        except BaseException:
            if done:
                checkpoints.set(path.name, done)
                echo(f"{path.name}: stopped after user {done}; run again to resume")
            raise
        finally:
            bar.close()
        checkpoints.set(path.name, DONE)
    checkpoints.clear(p.name for p in paths)
