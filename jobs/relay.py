"""The outbox relay: applies cache changes that a crash or a Redis outage left behind.

Staleness bound: a change committed at time t is in Redis by
``t + OUTBOX_MIN_AGE + OUTBOX_RELAY_INTERVAL`` (plus one relay run), as long as Redis
answers. Applying is idempotent, so a relay racing the request that owns a row is safe.
"""

from __future__ import annotations

import logging

from cache.outbox import Applier
from cache.versioned import Change
from storage import cache_state
from storage.db import Database

log = logging.getLogger(__name__)

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
