"""Unit of work: one Postgres transaction plus the cache changes it commits.

    with app_state.uow() as uow:
        ...write rows with uow.session...
        uow.change(scope).op("SETBIT", key, offset, 1)
        uow.commit()

``change(scope)`` bumps the scope's version row inside the transaction; ``commit()``
writes the changes to the outbox in the same transaction, commits, then applies them to
Redis in one pipeline. That is the whole write: one transaction and one round trip. The
outbox row is not deleted here (that was a second transaction per write): the relay
(``cache.outbox.relay_outbox``, a scheduler job) applies every row older than
``OUTBOX_MIN_AGE`` again and deletes it. Applying is idempotent by version, so a row this
request applied costs the relay one no-op, and a row it could not apply (Redis down, a
crash right after the commit) is applied by the relay within the same bound.
The write is acknowledged once Postgres has it. Leaving the block without ``commit()``
rolls back.
"""

from __future__ import annotations

import contextlib
from types import TracebackType

from sqlalchemy.orm import Session

from cache.client import CacheUnavailable
from cache.keys import Scope
from cache.outbox import Applier, Rider
from cache.versioned import Change
from storage import cache_state
from storage.db import Database


class UnitOfWork:
    def __init__(self, db: Database, applier: Applier) -> None:
        self.db = db
        self.applier = applier
        self.connection = db.engine.connect()
        self.session: Session = Session(bind=self.connection, expire_on_commit=False)
        self.changes: list[Change] = []
        self.riders: list[Rider] = []
        self.committed = False

    def __enter__(self) -> UnitOfWork:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if not self.committed:
                self.session.rollback()
            self.session.close()
        finally:
            self.connection.close()

    def change(self, scope: Scope, keys: list[str] | None = None) -> Change:
        """Bump ``scope``'s version in this transaction; returns the Change to fill with ops."""
        for existing in self.changes:
            if existing.scope == scope:
                return existing
        version = cache_state.bump_version(self.session, scope.row_name)
        change = Change(scope, version, list(keys or []))
        self.changes.append(change)
        return change

    def adopt(self, change: Change) -> Change:
        """Add a change whose version the write's own statement bumped in this transaction
        (``storage.recent_reels.record_views`` bumps its reels' versions)."""
        if any(existing.scope == change.scope for existing in self.changes):
            raise ValueError(f"{change.scope} is changed twice in one unit of work")
        self.changes.append(change)
        return change

    def ride(self, rider: Rider) -> None:
        """Queue ``rider``'s best-effort commands in the apply pipeline after commit (the
        write's one round trip); they run only if the unit of work has changes."""
        self.riders.append(rider)

    def commit(self) -> None:
        if self.changes:
            cache_state.add_outbox(self.session, [c.to_json() for c in self.changes])
        self.session.commit()
        self.committed = True
        if not self.changes:
            return
        # Redis down or the breaker open: the relay applies it once Redis answers.
        with contextlib.suppress(CacheUnavailable):
            if self.riders:
                self.applier.apply(self.changes, riders=self.riders)
            else:
                self.applier.apply(self.changes)
