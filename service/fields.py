"""Shared request/response building blocks: the id URL converter and marshmallow fields."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from marshmallow import fields, validate
from werkzeug.routing import BaseConverter, ValidationError

MAX_ID = 2**63 - 1
# An id as text: ASCII digits (``\d`` would admit fullwidth and other Unicode digits), no
# leading zero, at most as many digits as MAX_ID. Other spellings are not the id: 404/401.
CANONICAL_ID = re.compile(r"[1-9][0-9]{0,18}")


class IdConverter(BaseConverter):
    """``<id:name>``: a positive 64-bit integer; anything else does not match (404)."""

    regex = CANONICAL_ID.pattern

    def to_python(self, value: str) -> int:
        number = int(value)
        if not 1 <= number <= MAX_ID:
            raise ValidationError()
        return number

    def to_url(self, value: int) -> str:
        return str(value)


def Id(**kwargs) -> fields.Integer:  # noqa: N802 - reads like a field class
    """A positive 64-bit id in a body or query (out of range -> 400)."""
    return fields.Integer(strict=True, validate=validate.Range(1, MAX_ID), **kwargs)


def isoformat(value: datetime | None) -> str | None:
    """ISO 8601 UTC with ``Z``, as API.md requires."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


class UtcDateTime(fields.DateTime):
    def _serialize(self, value, attr, obj, **kwargs):  # type: ignore[override]
        return isoformat(value)
