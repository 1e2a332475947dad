"""How every rendered time looks (API.md): ISO 8601 in UTC with ``Z``."""

from __future__ import annotations

from datetime import UTC, datetime


def isoformat(value: datetime | None) -> str | None:
    """ISO 8601 UTC with ``Z``; a naive value is taken as UTC (Postgres ``timestamp``)."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
