"""Applying committed changes to Redis: right after commit, and by the relay for rows a
crash or an outage left behind."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from cache import stats
from cache.client import Cache
from cache.versioned import Change, queue_apply

log = logging.getLogger(__name__)


class Applier:
    def __init__(self, cache: Cache) -> None:
        self.cache = cache

    def apply(self, changes: Iterable[Change], by: str = "request") -> None:
        """Apply ``changes`` in one pipelined round trip.

        Raises ``CacheUnavailable`` if Redis fails (the outbox row stays for the relay).
        Runs even while the breaker is open when ``by == "relay"``: the relay is how the
        cache becomes consistent again.
        """
        changes = list(changes)
        if not changes:
            return

        def run(r) -> None:
            pipe = r.pipeline(transaction=False)
            for change in changes:
                queue_apply(pipe, self.cache.keys, change, self.cache.idle_ttl)
            pipe.execute()

        if by == "relay":
            self.cache.run_unguarded("outbox", run)
        else:
            self.cache.run("outbox", run)
        stats.OUTBOX_APPLIED.labels(by).inc(len(changes))
