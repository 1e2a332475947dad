"""Hostile input that no schema catches, refused before any handler runs.

- NUL characters in a JSON string, a query parameter or the path: PostgreSQL text cannot
  hold them, so they would otherwise surface as a 500 deep in a query. Refused with
  ``400 {"code": "nul_character"}``.
- Safety net: a PostgreSQL "data exception" (``DataError``: a value out of range, an
  invalid string) raised while handling a request is the caller's bad value: ``400``.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, jsonify, request
from sqlalchemy.exc import DataError

from service.errors import error_body

log = logging.getLogger(__name__)

MAX_WALK = 100_000  # JSON nodes inspected (bodies are capped at 1 MiB anyway)


def _has_nul(value: Any) -> bool:
    stack = [value]
    seen = 0
    while stack and seen < MAX_WALK:
        item = stack.pop()
        seen += 1
        if isinstance(item, str):
            if "\x00" in item:
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def _refuse(message: str, code: str):
    response = jsonify(error_body(message, code))
    response.status_code = 400
    return response


def init_app(app: Flask) -> None:
    @app.before_request
    def _refuse_nul():
        if "\x00" in request.path or any(
            "\x00" in k or "\x00" in v for k, v in request.args.items(multi=True)
        ):
            return _refuse("NUL characters are not allowed", "nul_character")
        if request.is_json and request.content_length:
            body = request.get_json(silent=True)
            if body is not None and _has_nul(body):
                return _refuse("NUL characters are not allowed in strings", "nul_character")
        return None

    @app.errorhandler(DataError)
    def _data_error(error: DataError):
        log.warning("invalid value refused by PostgreSQL: %s", str(error.orig)[:200])
        return _refuse("A value is out of range or invalid", "invalid_value")
