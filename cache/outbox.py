"""Applying committed changes to Redis: right after commit, and by the relay for rows a
crash or an outage left behind.

A write request commits its data, its version bumps and its outbox row in one transaction,
applies the changes in one pipeline and never touches the row again. Clearing the outbox
is the relay's batched job (a scheduler job every ``OUTBOX_RELAY_INTERVAL``): it applies
every row older than ``OUTBOX_MIN_AGE`` once more and deletes it, 500 rows per
transaction. The relay cannot tell from Postgres which rows their request applied and
need not: ``APPLY`` is idempotent by version, so a row already in Redis is a no-op (the
version copy is at or past it) and a row left behind (Redis down, a crash between commit
and apply) is applied, or its scope's keys dropped when the copy is further behind.
APPLY's answer tells the two apart, so ``cache_outbox_applied_total{by="relay"}`` and the
relay's log count only the changes it had to apply.

The staleness bound: a change committed at time t is in Redis by
``t + OUTBOX_MIN_AGE + OUTBOX_RELAY_INTERVAL`` (plus one relay run), as long as Redis
answers. Outbox rows live about as long (a change's request applies it at once), so the
backlog gauge is about ``OUTBOX_RELAY_INTERVAL`` times the write rate in steady state.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from cache import stats
from cache.client import Cache
from cache.versioned import APPLY_ALREADY_IN, Change, queue_apply
from storage import cache_state
from storage.db import Database

if TYPE_CHECKING:
    from cache.live_events import Publisher

log = logging.getLogger(__name__)


class Rider(Protocol):
    """Commands that ride in a write's apply pipeline (the same round trip): ``queue``
    queues them on the pipeline and returns how many; ``done`` gets their replies. For
    best-effort work beside the outbox change (e.g. a post's trending re-score), never
    for what the change itself must carry: a rider is not in the outbox, so a crash or a
    Redis failure loses it."""

    def queue(self, pipe: Any) -> int: ...

    def done(self, replies: list[Any]) -> None: ...


class Applier:
    def __init__(self, cache: Cache) -> None:
        self.cache = cache
        # Live events (cache/live_events.py), set by the bootstrap: reads queued around the
        # apply in the same pipeline, events appended after it.
        self.publisher: Publisher | None = None

    def not_applied(self, changes: Sequence[Change]) -> tuple[list[Change], list[Change]]:
        """Split ``changes`` by their scope's version copy in Redis (one pipelined round trip
        of GETs, ignoring the breaker: the relay's check): ``(behind, unknown)``, those whose
        copy is older than them, and those whose copy is missing (Redis lost it: every
        stream of the user has had a ``reset`` since). Raises ``CacheUnavailable``."""
        if not changes:
            return [], []

        def run(r: Any) -> list[Any]:
            pipe = r.pipeline(transaction=False)
            for change in changes:
                pipe.get(self.cache.keys.version(change.scope))
            return pipe.execute()

        copies = self.cache.run_unguarded("outbox", run)
        behind = [c for c, copy in zip(changes, copies, strict=True)
                  if copy is not None and int(copy) < c.version]
        unknown = [c for c, copy in zip(changes, copies, strict=True) if copy is None]
        return behind, unknown

    def apply(self, changes: Iterable[Change], by: str = "request", announce: bool = True,
              repair: bool = False, riders: Sequence[Rider] = ()) -> int:
        """Apply ``changes`` in one pipelined round trip; returns how many were not in
        Redis yet (the others were already applied: no-ops). ``repair``: the changes are in
        Redis and their live events were lost (``Publisher.unannounced``): announce them.
        ``riders``: more commands queued after them in the same pipeline (``Rider``).

        Raises ``CacheUnavailable`` if Redis fails (the outbox row stays for the relay).
        Runs even while the breaker is open when ``by == "relay"``: the relay is how the
        cache becomes consistent again.
        """
        changes = list(changes)
        if not changes:
            return 0

        publisher = self.publisher if announce else None

        def run(r) -> tuple:
            pipe = r.pipeline(transaction=False)
            plan = publisher.plan(pipe, changes, by, repair) if publisher is not None \
                else None
            for change in changes:
                queue_apply(pipe, self.cache.keys, change, self.cache.idle_ttl)
            if plan is not None:
                plan.queue_after(pipe)
            counts = [rider.queue(pipe) for rider in riders]
            return plan, counts, pipe.execute()

        if by == "relay":
            plan, counts, replies = self.cache.run_unguarded("outbox", run)
        else:
            plan, counts, replies = self.cache.run("outbox", run)
        if riders:  # their replies are the pipeline's last, in order
            tail = len(replies) - sum(counts)
            replies, theirs = replies[:tail], replies[tail:]
            for rider, n in zip(riders, counts, strict=True):
                rider.done(theirs[:n])
                theirs = theirs[n:]
        # One APPLY answer per change, after the publisher's reads queued before them.
        start = len(plan.before) if plan is not None else 0
        results = replies[start:start + len(changes)]
        applied = sum(1 for result in results if result != APPLY_ALREADY_IN)
        if applied:
            stats.child(stats.OUTBOX_APPLIED, by).inc(applied)
        if plan is not None and publisher is not None:
            publisher.publish(plan, replies)
        return applied


    def announce_held(self, changes: Sequence[Change], started: Sequence[float]) -> None:
        """The relay's repair of announcements for changes Redis already holds (their
        request applied them): the groups' fan-outs are queued again
        (``Publisher.announce_held``), and the changes to a user's scope whose events were
        lost (``Publisher.unannounced``) are announced from the state Redis holds.
        Raises ``CacheUnavailable``."""
        if self.publisher is None or not changes:
            return
        self.publisher.announce_held(changes)
        lost = self.publisher.unannounced(changes, started)
        if lost:
            log.info("outbox relay announces %d changes whose live events were lost",
                     len(lost))
            self.apply(lost, by="relay", repair=True)


# Rows younger than this belong to requests that are still applying them.
OUTBOX_MIN_AGE = 2.0


def relay_outbox(db: Database, applier: Applier, min_age: float = OUTBOX_MIN_AGE) -> int:
    """Apply and delete every outbox row older than ``min_age`` seconds, in batches;
    returns how many changes were not in Redis yet (left behind by their request).
    Raises ``CacheUnavailable`` if Redis is still down (the rows stay)."""
    applied = cleared = 0
    while True:
        with db.session() as session:
            rows = cache_state.pending_outbox(session, older_than=min_age)
            if not rows:
                break
            pairs = [(Change.from_json(c), row.created_at.timestamp())  # its transaction's
                     for row in rows for c in row.changes]                  # start
            changes = [c for c, _ in pairs]
            started = {id(c): t for c, t in pairs}
            # Most rows were applied by their request: only the others are applied, and only
            # those Redis still has a version copy of are announced to live streams (a lost
            # copy means a lost history: the streams have sent ``reset``), so a relay pass
            # never repeats an event.
            behind, unknown = applier.not_applied(changes)
            applied += applier.apply(behind, by="relay")
            applied += applier.apply(unknown, by="relay", announce=False)
            # The rest were applied by their request, which may have died before queueing
            # their groups' fan-outs: queue them again (a job's id is its change, and it
            # skips members whose badge shows the count already: no repeats). So are those
            # of the changes whose copy was missing: their group's bitmap was not cached
            # (or lost), which says nothing of its members' streams.
            announced = {id(c) for c in behind}
            held = [c for c in changes if id(c) not in announced]
            applier.announce_held(held, [started[id(c)] for c in held])
            # Not durable (synchronous_commit off for this transaction): a delete lost in
            # a Postgres crash only makes the next run apply those rows again, a no-op.
            cache_state.delete_outbox(session, [row.id for row in rows], durable=False)
            session.commit()
            cleared += len(rows)
    if applied:
        log.info("outbox relay applied %d cache changes left behind", applied)
    if cleared:
        log.debug("outbox relay cleared %d rows", cleared)
    return applied
