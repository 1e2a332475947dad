"""Hostile input that no schema catches, refused before any handler runs.

- NUL characters in a JSON string, a query parameter or the path: PostgreSQL text cannot
  hold them, so they would otherwise surface as a 500 deep in a query. Refused with
  ``400 {"code": "nul_character"}``.
- JSON nested deeper than ``MAX_DEPTH`` (the stdlib decoder used for argument parsing
  would hit Python's recursion limit): ``400 {"code": "json_too_deep"}``; a body that is
  not JSON at all: ``400 {"code": "invalid_json"}`` as before.
- Strings that are not valid Unicode (lone surrogates such as ``"\\ud800"``): they cannot
  be stored as UTF-8: ``400 {"code": "invalid_unicode"}``.
- Safety net: a PostgreSQL "data exception" (``DataError``: a value out of range, an
  invalid string) raised while handling a request is the caller's bad value: ``400``.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, jsonify, request
from sqlalchemy.exc import DataError
from werkzeug.exceptions import BadRequest

from service.errors import error_body

log = logging.getLogger(__name__)

MAX_DEPTH = 64  # nesting levels of a JSON body


def _problem(value: Any) -> tuple[str, str] | None:
    """The first reason to refuse a parsed JSON body, as (message, code), or None."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return "NUL characters are not allowed in strings", "nul_character"
            if not item.isascii():
                try:
                    item.encode("utf-8")
                except UnicodeEncodeError:
                    return "Strings must be valid Unicode", "invalid_unicode"
        elif isinstance(item, dict | list):
            if depth > MAX_DEPTH:
                return f"JSON nested deeper than {MAX_DEPTH} levels", "json_too_deep"
            children = [*item.keys(), *item.values()] if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return None


def _refuse(message: str, code: str):
    response = jsonify(error_body(message, code))
    response.status_code = 400
    return response


def init_app(app: Flask) -> None:
    @app.before_request
    def _refuse_nul():
        # A decoded argument holds a NUL only if the raw query string has "%00" or a NUL:
        # most requests skip parsing the arguments here.
        query = request.query_string
        if "\x00" in request.path or (
            (b"%00" in query or b"\x00" in query)
            and any("\x00" in k or "\x00" in v for k, v in request.args.items(multi=True))
        ):
            return _refuse("NUL characters are not allowed", "nul_character")
        if request.is_json and request.get_data(cache=True):
            try:
                body = request.get_json()
            except BadRequest:
                return _refuse("Request body is not valid JSON", "invalid_json")
            problem = _problem(body)
            if problem is not None:
                return _refuse(*problem)
        return None

    @app.errorhandler(DataError)
    def _data_error(error: DataError):
        log.warning("invalid value refused by PostgreSQL: %s", str(error.orig)[:200])
        return _refuse("A value is out of range or invalid", "invalid_value")
