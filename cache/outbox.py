"""Applying committed changes to Redis: right after commit, and by the relay for rows a
crash or an outage left behind.

The relay's staleness bound: a change committed at time t is in Redis by
``t + OUTBOX_MIN_AGE + OUTBOX_RELAY_INTERVAL`` (plus one relay run), as long as Redis
answers. Applying is idempotent, so a relay racing the request that owns a row is safe.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING

from cache import stats
from cache.client import Cache
from cache.versioned import Change, queue_apply
from storage import cache_state
from storage.db import Database

if TYPE_CHECKING:
    from cache.live_events import Publisher

log = logging.getLogger(__name__)


class Applier:
    def __init__(self, cache: Cache) -> None:
        self.cache = cache
        # Live events (cache/live_events.py), set by the bootstrap: reads queued around the
        # apply in the same pipeline, events appended after it.
        self.publisher: Publisher | None = None

    def apply(self, changes: Iterable[Change], by: str = "request") -> None:
        """Apply ``changes`` in one pipelined round trip.

        Raises ``CacheUnavailable`` if Redis fails (the outbox row stays for the relay).
        Runs even while the breaker is open when ``by == "relay"``: the relay is how the
        cache becomes consistent again.
        """
        changes = list(changes)
        if not changes:
            return

        publisher = self.publisher

        def run(r):
            pipe = r.pipeline(transaction=False)
            plan = publisher.plan(pipe, changes) if publisher is not None else None
            for change in changes:
                queue_apply(pipe, self.cache.keys, change, self.cache.idle_ttl)
            if plan is not None:
                plan.queue_after(pipe)
            return plan, pipe.execute()

        if by == "relay":
            plan, replies = self.cache.run_unguarded("outbox", run)
        else:
            plan, replies = self.cache.run("outbox", run)
        stats.OUTBOX_APPLIED.labels(by).inc(len(changes))
        if plan is not None and publisher is not None:
            publisher.publish(plan, replies)


# Rows younger than this belong to requests that are still applying them.
OUTBOX_MIN_AGE = 2.0


def relay_outbox(db: Database, applier: Applier, min_age: float = OUTBOX_MIN_AGE) -> int:
    """Apply and delete every outbox row older than ``min_age`` seconds; returns how many
    changes were applied. Raises ``CacheUnavailable`` if Redis is still down."""
    total = 0
    while True:
        with db.session() as session:
            rows = cache_state.pending_outbox(session, older_than=min_age)
            if not rows:
                break
            changes = [Change.from_json(c) for row in rows for c in row.changes]
            applier.apply(changes, by="relay")
            cache_state.delete_outbox(session, [row.id for row in rows])
            session.commit()
            total += len(changes)
    if total:
        log.info("outbox relay applied %d leftover cache changes", total)
    return total
