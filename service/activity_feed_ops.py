"""Activity feed operations shared by the HTTP handlers, the RQ jobs and the CLI.

Every write follows one pattern (``_locked_write``): lock the affected users' cache
scopes in id order (``uow.change``: bumps their version rows, so writers of one user are
serialised and two batch writers never deadlock), change rows, recompute each user's
counters and recent items from Postgres under those locks, commit. The unit of work then
applies the absolute values to Redis (see ``cache.activity_feed``).
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from redis.exceptions import RedisError
from rq import Queue, Retry
from rq.exceptions import DuplicateJobError
from sqlalchemy.orm import Session

from cache import activity_feed as feed_cache
from service.bootstrap import AppState
from storage import activity_feed as store

log = logging.getLogger(__name__)

T = TypeVar("T")

BATCH_USERS = 500  # users per transaction in retention, archive and backfill runs
MAX_FANOUT_USERS = 10_000  # user_ids per fan-out request (400 beyond)
MAX_MARK_READ_IDS = 1_000  # activity_ids per mark-read request (400 beyond)


def _locked_write(
    app_state: AppState,
    user_ids: Sequence[int],
    work: Callable[[Session], T],
    changed: Callable[[T], bool] = lambda _: True,
) -> T:
    """Run ``work`` with the users' scopes locked; commit (and update the cache) only if
    ``changed(result)``, else roll back."""
    uids = sorted(set(user_ids))
    with app_state.uow() as uow:
        changes = {uid: uow.change(feed_cache.scope(uid)) for uid in uids}
        result = work(uow.session)
        if not changed(result):
            return result
        counts = store.counts_for_users(uow.session, uids)
        recent = store.recent_for_users(uow.session, uids, feed_cache.RECENT_COUNT)
        for uid, change in changes.items():
            feed_cache.record_write(change, app_state.cache.keys, uid, counts[uid], recent[uid])
        uow.commit()
    return result


def _now() -> datetime:
    return datetime.now(UTC)


# --- events and fan-out --------------------------------------------------------------------


def record_event(app_state: AppState, values: dict[str, Any]) -> tuple[Any, int | None]:
    """Store an event and make its activity: in this transaction, or (with
    ``USE_ASYNC_ACTIVITY_FEED``) on a worker. Returns ``(event, activity_id or None)``.

    If the queue cannot take the job, the activity is made here instead: it never waits
    for a backfill."""
    if not app_state.settings.use_async_activity_feed:

        def work(session: Session) -> tuple[Any, int | None]:
            event = store.create_event(session, **values)
            return event, store.activity_from_event(session, event.id)

        return _locked_write(app_state, [values["user_id"]], work)
    with app_state.uow() as uow:
        event = store.create_event(uow.session, **values)
        uow.commit()
    try:
        enqueue_activity_for_event(app_state, event.id)
    except RedisError:
        log.warning("activity queue unavailable: event %s handled in the request", event.id)
        return event, activity_for_event(app_state, event.id)
    return event, None


def activity_for_event(app_state: AppState, event_id: int) -> int | None:
    """Create the activity of a stored event; None if the event is unknown or already has
    one (idempotent: safe to retry)."""
    with app_state.db.read() as session:
        user_id = store.event_owner(session, event_id)
    if user_id is None:
        return None
    return _locked_write(
        app_state,
        [user_id],
        lambda s: store.activity_from_event(s, event_id),
        changed=lambda activity_id: activity_id is not None,
    )


def deliver(
    app_state: AppState, user_ids: Sequence[int], created_at: datetime, item: dict[str, Any]
) -> int:
    """One fan-out chunk: give each user the item (idempotent). Returns items created."""
    return _locked_write(
        app_state,
        user_ids,
        lambda s: store.fan_out(s, sorted(set(user_ids)), created_at, item),
        changed=lambda created: created > 0,
    )


# --- reads ---------------------------------------------------------------------------------


def list_feed(
    app_state: AppState, query: store.PageQuery, page: int, page_size: int
) -> tuple[int, list[dict[str, Any]]]:
    """Page 1 of the unfiltered / unread-only listing from Redis; the rest from Postgres."""
    plain = query.activity_type is None and query.start is None and query.end is None
    if plain and page == 1 and query.is_read is not True:
        return feed_cache.first_page(
            app_state.cache, app_state.filler, app_state.db, query.user_id,
            unread_only=query.is_read is False, size=page_size,
        )
    with app_state.db.read() as session:
        return store.page(session, query, (page - 1) * page_size, page_size)


def summary(app_state: AppState, user_id: int) -> feed_cache.Summary:
    return feed_cache.summary(app_state.cache, app_state.filler, app_state.db, user_id)


def mark_read(app_state: AppState, user_id: int, activity_ids: Sequence[int] | None) -> int:
    """Mark the caller's unread items read (``None`` = all); returns how many changed."""
    ids = None if activity_ids is None else sorted(set(activity_ids))
    return _locked_write(
        app_state, [user_id], lambda s: store.mark_read(s, user_id, ids), lambda n: n > 0
    )


# --- backfill and retention ----------------------------------------------------------------


def retention_cutoffs(
    app_state: AppState,
    now: datetime,
    activity_type: str | None = None,
    older_than_days: int | None = None,
) -> dict[str, datetime]:
    """Per type, the creation time before which items expire."""
    policy = app_state.settings.activity_retention_days
    types = [activity_type] if activity_type else list(store.ACTIVITY_TYPES)
    return {
        t: now - timedelta(days=older_than_days if older_than_days is not None else policy[t])
        for t in types
        if older_than_days is not None or t in policy
    }


@dataclass
class BackfillReport:
    start: datetime
    end: datetime
    created: int = 0
    users: int = 0
    dry_run: bool = False


def backfill(
    app_state: AppState,
    user_ids: Sequence[int] | None,
    days_back: int,
    dry_run: bool = False,
) -> BackfillReport:
    """Create missing activities from events of the last ``days_back`` days, for the given
    users or every user with such events; never twice for one event."""
    end = _now()
    report = BackfillReport(end - timedelta(days=days_back), end, dry_run=dry_run)
    cutoffs = retention_cutoffs(app_state, end)
    for batch in _batches(app_state, user_ids, report.start):
        if dry_run:
            with app_state.db.read() as session:
                report.created += store.count_backfill(session, batch, report.start, cutoffs)
            continue
        created = _locked_write(
            app_state,
            batch,
            lambda s, b=batch: store.backfill(s, b, report.start, cutoffs),
            changed=bool,
        )
        report.created += sum(created.values())
        report.users += len(created)
    return report


def _batches(app_state: AppState, user_ids: Sequence[int] | None, since: datetime):
    if user_ids is not None:
        uids = sorted(set(user_ids))
        for i in range(0, len(uids), BATCH_USERS):
            yield uids[i : i + BATCH_USERS]
        return
    after = 0
    while True:
        with app_state.db.read() as session:
            batch = store.users_with_events(session, since, after, BATCH_USERS)
        if not batch:
            return
        yield batch
        after = batch[-1]


@dataclass
class CleanupReport:
    cutoffs: dict[str, datetime]
    deleted: dict[str, int] = field(default_factory=dict)
    users: int = 0
    dry_run: bool = False

    @property
    def total(self) -> int:
        return sum(self.deleted.values())


def cleanup(
    app_state: AppState,
    activity_type: str | None = None,
    older_than_days: int | None = None,
    dry_run: bool = False,
) -> CleanupReport:
    """Delete items past retention (per-type policy, or ``older_than_days`` for every type)
    in batches of users; counters of each touched user are recomputed in its batch."""
    cutoffs = retention_cutoffs(app_state, _now(), activity_type, older_than_days)
    report = CleanupReport(cutoffs, dry_run=dry_run)
    if dry_run:
        with app_state.db.read() as session:
            report.deleted = store.count_expired(session, cutoffs)
        return report
    after = 0
    while True:
        with app_state.db.read() as session:
            users = store.users_with_expired(session, cutoffs, after, BATCH_USERS)
        if not users:
            return report
        deleted = _locked_write(
            app_state, users, lambda s, u=users: store.delete_expired(s, u, cutoffs), bool
        )
        for activity_type_, n in deleted.items():
            report.deleted[activity_type_] = report.deleted.get(activity_type_, 0) + n
        report.users += len(users)
        after = users[-1]


@dataclass
class ArchiveReport:
    cutoff: datetime
    moved: int = 0
    users: int = 0


def archive(app_state: AppState, older_than_days: int) -> ArchiveReport:
    """Move items older than ``older_than_days`` to ``activities_archive``."""
    report = ArchiveReport(_now() - timedelta(days=older_than_days))
    after = 0
    while True:
        with app_state.db.read() as session:
            users = store.users_with_items_before(session, report.cutoff, after, BATCH_USERS)
        if not users:
            return report
        report.moved += _locked_write(
            app_state, users, lambda s, u=users: store.archive_before(s, u, report.cutoff),
            lambda n: n > 0,
        )
        report.users += len(users)
        after = users[-1]

# --- the activity queue: jobs enqueued by name (``jobs/activity_feed.py`` runs them) -------

ACTIVITY_JOBS = "jobs.activity_feed"


def activity_retry(app_state: AppState) -> Retry:
    return Retry(max=3, interval=list(app_state.settings.activity_retry_intervals) or 0)


def activity_queue(app_state: AppState) -> Queue:
    return app_state.queue(app_state.settings.activity_queue)


def event_job_id(app_state: AppState, event_id: int) -> str:
    """One job per event and queue (the queue name keeps test runs and deployments that
    share a queue Redis apart)."""
    queue = re.sub(r"[^A-Za-z0-9_-]", "_", activity_queue(app_state).name)
    return f"{queue}-activity-event-{event_id}"


def enqueue_activity_for_event(app_state: AppState, event_id: int) -> str:
    """Queue the creation of an event's activity; raises ``RedisError`` if the queue is
    down. One job per event (a second enqueue of the same event is a no-op)."""
    job_id = event_job_id(app_state, event_id)
    try:
        job = activity_queue(app_state).enqueue(
            f"{ACTIVITY_JOBS}.activity_for_event", event_id, job_id=job_id, unique=True,
            retry=activity_retry(app_state),
        )
    except DuplicateJobError:
        return job_id
    return job.id


class QueueFull(Exception):
    """The activity queue holds ``ACTIVITY_QUEUE_MAX_DEPTH`` jobs or more: refuse new work
    rather than let a burst of fan-outs queue without bound."""

    def __init__(self, depth: int) -> None:
        super().__init__(f"{depth} jobs waiting")
        self.depth = depth


def enqueue_fan_out(
    app_state: AppState, user_ids: list[int], created_at: datetime, item: dict[str, Any]
) -> str:
    """Queue a fan-out (split into chunk jobs by the worker); returns its job id. Raises
    ``QueueFull`` when the activity queue is at its depth cap, ``RedisError`` when it is
    down."""
    queue = activity_queue(app_state)
    depth = queue.count
    if depth >= app_state.settings.activity_queue_max_depth:
        raise QueueFull(depth)
    job = queue.enqueue(
        f"{ACTIVITY_JOBS}.fan_out", user_ids, created_at.isoformat(), item,
        job_id=f"fanout-{uuid.uuid4().hex}", retry=activity_retry(app_state),
    )
    return job.id
