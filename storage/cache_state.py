"""SQL side of the cache core: version rows (the truth of every cache version) and the
outbox of cache changes written in the same transaction as the data."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import delete, select, text
from sqlalchemy.orm import Session

from storage.models import CacheVersion, OutboxEntry

_BUMP = text(
    "INSERT INTO cache_versions (name, version) VALUES (:name, 1) "
    "ON CONFLICT (name) DO UPDATE SET version = cache_versions.version + 1 "
    "RETURNING version"
)


def bump_version(session: Session, name: str) -> int:
    """Increment version ``name`` in the current transaction and return the new value.

    The row lock it takes serialises writers of one scope until commit, so values a
    writer computes after the bump are exact at that version.
    """
    return int(session.execute(_BUMP, {"name": name}).scalar_one())


def get_versions(session: Session, names: Sequence[str]) -> dict[str, int]:
    """Versions of many scopes in one statement (0 for a name never bumped)."""
    rows = session.execute(
        select(CacheVersion.name, CacheVersion.version).where(CacheVersion.name.in_(names))
    ).all()
    found = {name: int(version) for name, version in rows}
    return {name: found.get(name, 0) for name in names}


def get_version(session: Session, name: str) -> int:
    value = session.execute(
        select(CacheVersion.version).where(CacheVersion.name == name)
    ).scalar_one_or_none()
    return int(value or 0)


# Core statements on the table, not ORM add/flush and ORM bulk delete: every write request
# runs both, and the ORM paths cost about 30% of a reel view's Python time (py-spy, bench).
_OUTBOX = OutboxEntry.__table__


# A fixed text statement with the JSON encoded by orjson: the Core insert was compiled
# (cache key and all) and its JSONB value encoded by the stdlib on every write.
_ADD_OUTBOX = text("INSERT INTO cache_outbox (changes) VALUES (CAST(:changes AS jsonb)) "
                   "RETURNING id")


def add_outbox(session: Session, changes: list[dict[str, Any]]) -> int:
    encoded = orjson.dumps(changes, option=orjson.OPT_NON_STR_KEYS).decode()
    return int(session.execute(_ADD_OUTBOX, {"changes": encoded}).scalar_one())


def delete_outbox(session: Session, ids: Sequence[int], durable: bool = True) -> None:
    """Delete applied outbox rows in the current transaction (the relay's batches).

    ``durable=False`` lets this transaction commit without waiting for its WAL flush
    (``synchronous_commit = off``, this transaction only): a delete lost in a Postgres
    crash only makes the relay apply the change again, which is a no-op.
    """
    if not ids:
        return
    if not durable:
        session.execute(text("SET LOCAL synchronous_commit = off"))
    session.execute(delete(_OUTBOX).where(_OUTBOX.c.id.in_(list(ids))))


def pending_outbox(
    session: Session, older_than: float = 5.0, limit: int = 500
) -> list[OutboxEntry]:
    """Outbox rows older than ``older_than`` seconds (applied by their request or left
    behind: the relay applies them all again), oldest first, locked so that two relays
    never take the same rows at once."""
    cutoff = datetime.now(UTC) - timedelta(seconds=older_than)
    return list(
        session.execute(
            select(OutboxEntry)
            .where(OutboxEntry.created_at <= cutoff)
            .order_by(OutboxEntry.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
        ).scalars()
    )


def outbox_size(session: Session) -> int:
    return int(session.execute(text("SELECT count(*) FROM cache_outbox")).scalar_one())


def outbox_backlog(session: Session) -> tuple[int, float]:
    """``(rows, age of the oldest in seconds)`` of the outbox; ``(0, 0.0)`` when empty."""
    rows, age = session.execute(
        text("SELECT count(*), EXTRACT(EPOCH FROM now() - min(created_at)) FROM cache_outbox")
    ).one()
    return int(rows), float(age or 0.0)
