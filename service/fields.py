"""Shared request/response building blocks: the id URL converter and marshmallow fields."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta
from typing import Any

from marshmallow import ValidationError as FieldError
from marshmallow import fields, validate
from werkzeug.routing import BaseConverter, ValidationError

from storage.times import isoformat  # the one time format; entities are rendered with it

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




class UtcDateTime(fields.DateTime):
    def _serialize(self, value, attr, obj, **kwargs):  # type: ignore[override]
        return isoformat(value)


class CappedList(fields.List):
    """A list whose length is checked before its items are (a huge list fails fast)."""

    def __init__(self, inner: fields.Field, cap: int, **kwargs: Any) -> None:
        super().__init__(inner, **kwargs)
        self.cap = cap

    def _deserialize(self, value, attr, data, **kwargs):  # type: ignore[override]
        if isinstance(value, list) and not 1 <= len(value) <= self.cap:
            raise FieldError(f"Give between 1 and {self.cap} ids.")
        return super()._deserialize(value, attr, data, **kwargs)


class StrictBoolean(fields.Boolean):
    """JSON ``true``/``false`` only (no 1, "yes"...)."""

    def _deserialize(self, value, attr, data, **kwargs):  # type: ignore[override]
        if not isinstance(value, bool):
            raise FieldError("Not a valid boolean.")
        return value


class IsoDateTime(fields.Field):
    """An ISO 8601 date or datetime (naive = UTC). A bare date as an end bound means the
    end of that day."""

    def __init__(self, end_of_day: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.end_of_day = end_of_day

    def _deserialize(self, value, attr, data, **kwargs):  # type: ignore[override]
        if not isinstance(value, str) or len(value) > 40:
            raise FieldError("Not a valid ISO 8601 date or datetime.")
        try:
            if len(value) == 10:
                day = date.fromisoformat(value)
                start = datetime(day.year, day.month, day.day, tzinfo=UTC)
                return start + timedelta(days=1, microseconds=-1) if self.end_of_day else start
            moment = datetime.fromisoformat(value)
        except ValueError as exc:
            raise FieldError("Not a valid ISO 8601 date or datetime.") from exc
        return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
