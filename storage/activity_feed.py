"""SQL of the user activity feed: events, activities, counts, retention and archive.

Every statement that touches many users takes a list of user ids, so callers can lock
those users' cache scopes first (in id order) and then run one statement per batch.
Items leave this module as plain dicts (``item_dict``) with ISO 8601 ``Z`` timestamps:
the same shape is cached in Redis and served from Postgres, so both answer identically.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Select, func, select, text
from sqlalchemy.orm import Session

from storage.models import Activity, Event
from storage.times import isoformat

ACTIVITY_TYPES: tuple[str, ...] = (
    "event",
    "fast_start",
    "fast_join",
    "fast_leave",
    "devotional_available",
    "milestone",
    "fast_reminder",
    "devotional_reminder",
)

_ITEM_COLUMNS = (
    Activity.id,
    Activity.user_id,
    Activity.activity_type,
    Activity.title,
    Activity.description,
    Activity.is_read,
    Activity.read_at,
    Activity.created_at,
    Activity.data,
    Activity.target_type,
    Activity.target_id,
)


def item_dict(row: Any) -> dict[str, Any]:
    """One activity as cached and served (before display fields are added)."""
    return {
        "id": row.id,
        "activity_type": row.activity_type,
        "title": row.title,
        "description": row.description,
        "is_read": row.is_read,
        "read_at": isoformat(row.read_at),
        "created_at": isoformat(row.created_at),
        "data": row.data,
        "target_type": row.target_type,
        "target_id": row.target_id,
    }


@dataclass
class FeedCounts:
    total: int = 0
    unread: int = 0
    by_type: dict[str, int] = field(default_factory=dict)


def activity_type_for_event(event_type: str) -> str:
    """An event of a known activity type makes that type; any other event is ``event``."""
    return event_type if event_type in ACTIVITY_TYPES else "event"


# --- events --------------------------------------------------------------------------------


def create_event(session: Session, **values: Any) -> Event:
    event = Event(**values)
    session.add(event)
    session.flush()
    session.refresh(event)
    return event


def event_owner(session: Session, event_id: int) -> int | None:
    return session.execute(
        select(Event.user_id).where(Event.id == event_id)
    ).scalar_one_or_none()


_FROM_EVENTS = """
INSERT INTO activities (user_id, activity_type, title, description, data, target_type,
                        target_id, created_at, source_event_id)
SELECT e.user_id,
       CASE WHEN e.event_type = ANY(CAST(:types AS text[])) THEN e.event_type ELSE 'event' END,
       e.title, e.description, e.data, e.target_type, e.target_id, e.created_at, e.id
FROM events e
WHERE {where}
  AND NOT EXISTS (SELECT 1 FROM activities_archive x WHERE x.source_event_id = e.id)
ON CONFLICT (source_event_id) DO NOTHING
RETURNING id, user_id
"""


def activity_from_event(session: Session, event_id: int) -> int | None:
    """Create the activity of one event; None if it already has one (live or archived)."""
    row = session.execute(
        text(_FROM_EVENTS.format(where="e.id = :event_id")),
        {"event_id": event_id, "types": list(ACTIVITY_TYPES)},
    ).first()
    return None if row is None else int(row.id)


_BACKFILL_WHERE = """
e.user_id = ANY(CAST(:uids AS bigint[])) AND e.created_at >= :since
  AND e.created_at >= (SELECT r.cutoff FROM unnest(CAST(:rtypes AS text[]),
        CAST(:rcutoffs AS timestamptz[])) AS r(t, cutoff)
      WHERE r.t = CASE WHEN e.event_type = ANY(CAST(:types AS text[]))
                       THEN e.event_type ELSE 'event' END)
"""


def _backfill_params(
    user_ids: Sequence[int], since: datetime, cutoffs: dict[str, datetime]
) -> dict[str, Any]:
    return {
        "uids": list(user_ids),
        "since": since,
        "types": list(ACTIVITY_TYPES),
        "rtypes": list(cutoffs),
        "rcutoffs": list(cutoffs.values()),
    }


def backfill(
    session: Session, user_ids: Sequence[int], since: datetime, cutoffs: dict[str, datetime]
) -> dict[int, int]:
    """Create the missing activities of these users' events since ``since``.

    Skips events that already have an item (the UNIQUE ``source_event_id``), whose item was
    archived, or that are older than their type's retention ``cutoffs`` (cleanup would
    delete them again). Returns created counts per user.
    """
    rows = session.execute(
        text(_FROM_EVENTS.format(where=_BACKFILL_WHERE)),
        _backfill_params(user_ids, since, cutoffs),
    ).all()
    created: dict[int, int] = {}
    for row in rows:
        created[row.user_id] = created.get(row.user_id, 0) + 1
    return created


def count_backfill(
    session: Session, user_ids: Sequence[int], since: datetime, cutoffs: dict[str, datetime]
) -> int:
    """How many items ``backfill`` would create (for dry runs)."""
    sql = (
        f"SELECT count(*) FROM events e WHERE {_BACKFILL_WHERE}"
        " AND NOT EXISTS (SELECT 1 FROM activities a WHERE a.source_event_id = e.id)"
        " AND NOT EXISTS (SELECT 1 FROM activities_archive x WHERE x.source_event_id = e.id)"
    )
    return int(
        session.execute(text(sql), _backfill_params(user_ids, since, cutoffs)).scalar_one()
    )


def users_with_events(session: Session, since: datetime, after: int, limit: int) -> list[int]:
    return list(
        session.execute(
            select(Event.user_id)
            .where(Event.created_at >= since, Event.user_id > after)
            .group_by(Event.user_id)
            .order_by(Event.user_id)
            .limit(limit)
        ).scalars()
    )


# --- fan-out -------------------------------------------------------------------------------


_FANOUT = """
WITH p AS (SELECT CAST(:activity_type AS varchar) AS activity_type,
                  CAST(:title AS varchar) AS title, CAST(:description AS text) AS description,
                  CAST(:data AS jsonb) AS data, CAST(:target_type AS varchar) AS target_type,
                  CAST(:target_id AS bigint) AS target_id,
                  CAST(:created_at AS timestamptz) AS created_at)
INSERT INTO activities (user_id, activity_type, title, description, data, target_type,
                        target_id, created_at)
SELECT u.id, p.activity_type, p.title, p.description, p.data, p.target_type, p.target_id,
       p.created_at
FROM p, unnest(CAST(:uids AS bigint[])) AS u(id)
WHERE NOT EXISTS (
  SELECT 1 FROM activities a
  WHERE a.user_id = u.id AND a.created_at = p.created_at
    AND a.activity_type = p.activity_type AND a.title = p.title)
RETURNING user_id
"""


def fan_out(
    session: Session, user_ids: Sequence[int], created_at: datetime, item: dict[str, Any]
) -> int:
    """Give each user one item. Idempotent: (user, created_at, type, title) is the fan-out's
    natural key, so a retried chunk never makes a second copy. Returns rows created."""
    import json

    params = {
        "uids": list(user_ids),
        "created_at": created_at,
        "activity_type": item["activity_type"],
        "title": item["title"],
        "description": item.get("description"),
        "data": None if item.get("data") is None else json.dumps(item["data"]),
        "target_type": item.get("target_type"),
        "target_id": item.get("target_id"),
    }
    return len(session.execute(text(_FANOUT), params).all())


# --- reads ---------------------------------------------------------------------------------


def counts_for_users(session: Session, user_ids: Sequence[int]) -> dict[int, FeedCounts]:
    """Exact totals, unread and per-type counts (every user in ``user_ids`` is present)."""
    result = {uid: FeedCounts() for uid in user_ids}
    rows = session.execute(
        select(
            Activity.user_id,
            Activity.activity_type,
            func.count(),
            func.count().filter(Activity.is_read.is_(False)),
        )
        .where(Activity.user_id.in_(list(user_ids)))
        .group_by(Activity.user_id, Activity.activity_type)
    ).all()
    for user_id, activity_type, total, unread in rows:
        counts = result[user_id]
        counts.total += total
        counts.unread += unread
        counts.by_type[activity_type] = total
    return result


_RECENT = """
SELECT a.* FROM unnest(CAST(:uids AS bigint[])) AS u(id)
CROSS JOIN LATERAL (
  SELECT id, user_id, activity_type, title, description, is_read, read_at, created_at, data,
         target_type, target_id
  FROM activities WHERE user_id = u.id {extra}
  ORDER BY created_at DESC, id DESC LIMIT :n) a
"""


def recent_for_users(
    session: Session, user_ids: Sequence[int], n: int, unread_only: bool = False
) -> dict[int, list[dict[str, Any]]]:
    """The newest ``n`` items of each user (newest first)."""
    sql = _RECENT.format(extra="AND NOT is_read" if unread_only else "")
    result: dict[int, list[dict[str, Any]]] = {uid: [] for uid in user_ids}
    for row in session.execute(text(sql), {"uids": list(user_ids), "n": n}):
        result[row.user_id].append(item_dict(row))
    return result


@dataclass
class PageQuery:
    user_id: int
    activity_type: str | None = None
    is_read: bool | None = None
    start: datetime | None = None
    end: datetime | None = None  # inclusive


def _filtered(query: PageQuery, stmt: Select) -> Select:
    stmt = stmt.where(Activity.user_id == query.user_id)
    if query.activity_type is not None:
        stmt = stmt.where(Activity.activity_type == query.activity_type)
    if query.is_read is not None:
        stmt = stmt.where(Activity.is_read.is_(query.is_read))
    if query.start is not None:
        stmt = stmt.where(Activity.created_at >= query.start)
    if query.end is not None:
        stmt = stmt.where(Activity.created_at <= query.end)
    return stmt


def page(
    session: Session, query: PageQuery, offset: int, limit: int
) -> tuple[int, list[dict[str, Any]]]:
    """``(count, items)`` of one filtered page, newest first (indexes: user/time, unread)."""
    count = session.execute(_filtered(query, select(func.count()).select_from(Activity)))
    total = int(count.scalar_one())
    if offset >= total:
        return total, []
    rows = session.execute(
        _filtered(query, select(*_ITEM_COLUMNS))
        .order_by(Activity.created_at.desc(), Activity.id.desc())
        .offset(offset)
        .limit(limit)
    ).all()
    return total, [item_dict(r) for r in rows]


# --- writes --------------------------------------------------------------------------------


def mark_read(session: Session, user_id: int, activity_ids: Sequence[int] | None) -> int:
    """Mark the user's unread items (``None`` = all) read in one statement; returns how
    many changed. Other users' ids and unknown ids match nothing."""
    where = "user_id = :uid AND NOT is_read"
    params: dict[str, Any] = {"uid": user_id}
    if activity_ids is not None:
        where += " AND id = ANY(CAST(:ids AS bigint[]))"
        params["ids"] = list(activity_ids)
    result = session.execute(
        text(f"UPDATE activities SET is_read = true, read_at = now() WHERE {where}"), params
    )
    return int(result.rowcount)


# --- retention -----------------------------------------------------------------------------

_EXPIRED = """
FROM activities a
JOIN unnest(CAST(:rtypes AS text[]), CAST(:rcutoffs AS timestamptz[])) AS r(t, cutoff)
  ON a.activity_type = r.t AND a.created_at < r.cutoff
"""


def _cutoff_params(cutoffs: dict[str, datetime]) -> dict[str, Any]:
    return {"rtypes": list(cutoffs), "rcutoffs": list(cutoffs.values())}


def users_with_expired(
    session: Session, cutoffs: dict[str, datetime], after: int, limit: int
) -> list[int]:
    """Users owning items older than their type's cutoff (index: type, created_at)."""
    sql = (
        f"SELECT a.user_id {_EXPIRED} WHERE a.user_id > :after"
        " GROUP BY a.user_id ORDER BY a.user_id LIMIT :limit"
    )
    params = {**_cutoff_params(cutoffs), "after": after, "limit": limit}
    return [int(r[0]) for r in session.execute(text(sql), params)]


def count_expired(session: Session, cutoffs: dict[str, datetime]) -> dict[str, int]:
    sql = f"SELECT a.activity_type, count(*) {_EXPIRED} GROUP BY a.activity_type"
    return {t: int(n) for t, n in session.execute(text(sql), _cutoff_params(cutoffs))}


def delete_expired(
    session: Session, user_ids: Sequence[int], cutoffs: dict[str, datetime]
) -> dict[str, int]:
    """Delete these users' expired items; returns deleted counts per type."""
    sql = (
        "WITH gone AS (DELETE FROM activities d USING unnest(CAST(:rtypes AS text[]),"
        " CAST(:rcutoffs AS timestamptz[])) AS r(t, cutoff)"
        " WHERE d.user_id = ANY(CAST(:uids AS bigint[])) AND d.activity_type = r.t"
        " AND d.created_at < r.cutoff RETURNING d.activity_type)"
        " SELECT activity_type, count(*) FROM gone GROUP BY activity_type"
    )
    params = {**_cutoff_params(cutoffs), "uids": list(user_ids)}
    return {t: int(n) for t, n in session.execute(text(sql), params)}


def users_with_items_before(
    session: Session, cutoff: datetime, after: int, limit: int
) -> list[int]:
    sql = (
        "SELECT user_id FROM activities WHERE created_at < :cutoff AND user_id > :after"
        " GROUP BY user_id ORDER BY user_id LIMIT :limit"
    )
    params = {"cutoff": cutoff, "after": after, "limit": limit}
    return [int(r[0]) for r in session.execute(text(sql), params)]


_ARCHIVE = """
WITH moved AS (
  DELETE FROM activities
  WHERE user_id = ANY(CAST(:uids AS bigint[])) AND created_at < :cutoff
  RETURNING id, user_id, activity_type, title, description, data, target_type, target_id,
            is_read, read_at, created_at, source_event_id)
INSERT INTO activities_archive (id, user_id, activity_type, title, description, data,
    target_type, target_id, is_read, read_at, created_at, source_event_id)
SELECT id, user_id, activity_type, title, description, data, target_type, target_id,
       is_read, read_at, created_at, source_event_id FROM moved
"""


def archive_before(session: Session, user_ids: Sequence[int], cutoff: datetime) -> int:
    """Move these users' items created before ``cutoff`` to ``activities_archive``."""
    return int(
        session.execute(text(_ARCHIVE), {"uids": list(user_ids), "cutoff": cutoff}).rowcount
    )
