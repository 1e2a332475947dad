"""Test helpers for the activity feed: what pure Postgres says, and quick item makers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import text

from service import activity_feed_ops as ops

COLUMNS = ("id, activity_type, title, description, is_read, read_at, created_at, data, "
           "target_type, target_id")


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _rows(state, sql: str, **params) -> list[dict[str, Any]]:
    with state.db.session() as s:
        rows = s.execute(text(sql), params).mappings().all()
    return [
        {**row, "read_at": _iso(row["read_at"]), "created_at": _iso(row["created_at"])}
        for row in rows
    ]


def truth_summary(state, user_id: int) -> dict[str, Any]:
    """The summary endpoint's answer computed straight from ``activities``."""
    with state.db.session() as s:
        total, unread = s.execute(
            text("SELECT count(*), count(*) FILTER (WHERE NOT is_read) FROM activities"
                 " WHERE user_id = :u"), {"u": user_id}).one()
        types = dict(s.execute(
            text("SELECT activity_type, count(*) FROM activities WHERE user_id = :u"
                 " GROUP BY 1"), {"u": user_id}).all())
    recent = truth_items(state, user_id, limit=5)
    return {"total_items": total, "unread_count": unread, "read_count": total - unread,
            "activity_types": types, "recent_ids": [r["id"] for r in recent]}


def truth_items(state, user_id: int, unread_only: bool = False, limit: int = 1000,
                ) -> list[dict[str, Any]]:
    extra = " AND NOT is_read" if unread_only else ""
    return _rows(state, f"SELECT {COLUMNS} FROM activities WHERE user_id = :u{extra}"
                        " ORDER BY created_at DESC, id DESC LIMIT :n", u=user_id, n=limit)


def api_summary(client, headers) -> dict[str, Any]:
    r = client.get("/api/events/activity-feed/summary/", headers=headers)
    assert r.status_code == 200, r.get_json()
    body = r.get_json()
    body["recent_ids"] = [item["id"] for item in body.pop("recent_activity")]
    return body


def strip_display(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in item.items() if k not in ("activity_type_display", "age_display")}
            for item in items]


def make_item(state, user_id: int, activity_type: str = "milestone", days_ago: float = 0,
              title: str = "t", **extra: Any) -> None:
    """One item for one user, created ``days_ago`` (through the fan-out write path)."""
    created = datetime.now(UTC) - timedelta(days=days_ago)
    ops.deliver(state, [user_id], created, {"activity_type": activity_type, "title": title,
                                            **extra})


def ids_of(state, user_id: int) -> list[int]:
    return [r["id"] for r in truth_items(state, user_id)]
