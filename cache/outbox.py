"""Applying committed changes to Redis: right after commit, and by the relay for rows a
crash or an outage left behind."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING

from cache import stats
from cache.client import Cache
from cache.versioned import Change, Scripts, queue_apply

if TYPE_CHECKING:
    from cache.live_events import Publisher

log = logging.getLogger(__name__)


class Applier:
    def __init__(self, cache: Cache) -> None:
        self.cache = cache
        self.scripts = Scripts(cache.redis)
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
                queue_apply(pipe, self.scripts, self.cache.keys, change, self.cache.idle_ttl)
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
