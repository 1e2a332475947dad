"""The community feed's cursor codec (API section 3): opaque page cursors.

A cursor is base64url (unpadded) of JSON ``{"v":1,"f":feed,"q":filters,"k":[score,id]}``
plus, for trending, the walk's snapshot id ``s`` and its floor ``fl`` (``[score, id]``,
absent without one). ``q`` is the digest of the page's filters (``filters_digest``), so a
cursor is refused on another feed or with other filters. The ``(score, id)`` key is exact
and total: a walk resumes strictly after the last post it returned. Anything else is a
``400 invalid_cursor`` naming the cursor, never a wrong page.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Sequence
from typing import Any

import orjson

from service.errors import ApiError

MAX_KEY = 2**63  # every key part is a non-negative 64-bit integer


class BadCursor(ApiError):
    code = "invalid_cursor"

    def __init__(self) -> None:
        super().__init__("Invalid cursor", details={"cursor": ["Invalid or foreign cursor."]})


def filters_digest(asset_type: str | None, tags: Sequence[str]) -> str:
    """The cursor's ``q``: a short digest of the page's filters (tags as parsed: sorted)."""
    return hashlib.sha1(orjson.dumps([asset_type, list(tags)])).hexdigest()[:10]


def encode_cursor(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(orjson.dumps({"v": 1, **data})).decode().rstrip("=")


def _is_key(value: Any) -> bool:
    return (isinstance(value, list) and len(value) == 2
            and all(type(x) is int and 0 <= x < MAX_KEY for x in value))


def decode_cursor(raw: str, feed: str, query: str) -> dict[str, Any]:
    """The cursor's data if it is one of ours for ``feed`` and filters ``query``; else
    raises ``BadCursor``."""
    try:
        data = orjson.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
        key = data["k"]
        ok = (isinstance(data, dict) and data.get("v") == 1 and data.get("f") == feed
              and data.get("q") == query and _is_key(key))
        if ok and feed == "trending":
            ok = type(data.get("s")) is int and 0 < data["s"] < MAX_KEY
            floor = data.get("fl")
            ok = ok and (floor is None or _is_key(floor))
    except (binascii.Error, ValueError, TypeError, KeyError, orjson.JSONDecodeError) as exc:
        raise BadCursor() from exc
    if not ok:
        raise BadCursor()
    return data
