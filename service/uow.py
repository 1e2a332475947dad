"""Unit of work: one Postgres transaction plus the cache changes it commits.

    with app_state.uow() as uow:
        ...write rows with uow.session...
        uow.change(scope).op("SETBIT", key, offset, 1)
        uow.commit()

``change(scope)`` bumps the scope's version row inside the transaction; ``commit()``
writes the changes to the outbox in the same transaction, commits, then applies them to
Redis and deletes the outbox row. If Redis is down the row stays and the relay applies it
later; the write is acknowledged either way, because Postgres has it.
Leaving the block without ``commit()`` rolls back.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from types import TracebackType

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from cache.client import CacheUnavailable
from cache.keys import Scope
from cache.outbox import Applier
from cache.versioned import Change
from storage import cache_state
from storage.db import Database

log = logging.getLogger(__name__)


class UnitOfWork:
    # Test hook: called right after the Postgres commit, before Redis is touched.
    after_commit: Callable[[], None] | None = None

    def __init__(self, db: Database, applier: Applier) -> None:
        self.db = db
        self.applier = applier
        # One pooled connection for the whole unit: the outbox delete after commit reuses
        # it instead of checking out another (pre-ping, reset), a third of that delete's
        # cost in a reel view's profile.
        self.connection = db.engine.connect()
        self.session: Session = Session(bind=self.connection, expire_on_commit=False)
        self.changes: list[Change] = []
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

    def commit(self) -> None:
        outbox_id = None
        if self.changes:
            outbox_id = cache_state.add_outbox(self.session, [c.to_json() for c in self.changes])
        self.session.commit()
        self.committed = True
        if outbox_id is None:
            return
        if UnitOfWork.after_commit is not None:
            UnitOfWork.after_commit()
        try:
            self.applier.apply(self.changes)
        except CacheUnavailable:
            return  # the relay applies it once Redis answers
        try:
            cache_state.delete_outbox(self.session, [outbox_id], durable=False)
            self.session.commit()
        except SQLAlchemyError:
            # Harmless: replaying an applied change is a no-op; the relay deletes it.
            log.warning("could not delete applied outbox row %s", outbox_id, exc_info=True)
