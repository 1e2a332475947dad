"""The error format of API.md for every failure: ``{"error","code","details"?}``.

Domain code raises ``ApiError`` (or a subclass); HTTP exceptions from Flask/werkzeug and
flask-smorest's validation errors are mapped here too, so no failure renders HTML or a
different shape. Unexpected exceptions are logged and answered as a JSON 500.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, jsonify
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from werkzeug.exceptions import HTTPException

log = logging.getLogger(__name__)

CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "body_too_large",
    414: "uri_too_long",
    415: "unsupported_media_type",
    417: "expectation_failed",
    422: "validation_error",
    429: "too_many_requests",
    431: "header_fields_too_large",
    500: "internal_error",
    501: "not_implemented",
    503: "service_unavailable",
}


class ApiError(Exception):
    status = 400
    code = "bad_request"

    def __init__(
        self,
        message: str,
        status: int | None = None,
        code: str | None = None,
        details: dict[str, Any] | None = None,
        body: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
            self.code = CODES.get(status, self.code)
        if code is not None:
            self.code = code
        self.details = details
        # A section's legacy clients may expect extra fields (e.g. reels' {"error"} only).
        self.body = body


class NotFound(ApiError):
    status, code = 404, "not_found"


class Forbidden(ApiError):
    status, code = 403, "forbidden"


class Unauthorized(ApiError):
    status, code = 401, "unauthorized"


class ServiceUnavailable(ApiError):
    status, code = 503, "service_unavailable"

    def __init__(self, message: str, *, code: str | None = None, retry_after: int = 1) -> None:
        super().__init__(message, code=code)
        self.retry_after = retry_after


def error_body(message: str, code: str, details: dict[str, Any] | None = None) -> dict:
    body: dict[str, Any] = {"error": message, "code": code}
    if details:
        body["details"] = details
    return body


def _flatten_messages(messages: Any) -> dict[str, Any]:
    """webargs nests messages by location ({"json": {...}}); clients want fields."""
    if not isinstance(messages, dict):
        return {"_schema": messages}
    flat: dict[str, Any] = {}
    for location, fields in messages.items():
        if isinstance(fields, dict):
            flat.update(fields)
        else:
            flat[location] = fields
    return flat


def http_error_response(error: HTTPException):
    status = error.code or 500
    data = getattr(error, "data", None) or {}
    messages = data.get("messages")
    if status == 422 or (status == 400 and messages):
        details = _flatten_messages(messages) if messages else None
        invalid_json = bool(details) and any(
            "Invalid JSON body" in str(v) for v in details.values()
        )
        if invalid_json:
            body = error_body("Request body is not valid JSON", "invalid_json")
        else:
            body = error_body("Invalid request", "validation_error", details)
        status = 400
    else:
        description = error.description if isinstance(error.description, str) else None
        body = error_body(description or error.name, CODES.get(status, "error"))
    response = jsonify(body)
    response.status_code = status
    if status == 405 and getattr(error, "valid_methods", None):
        response.headers["Allow"] = ", ".join(sorted(error.valid_methods))
    if status == 503:
        response.headers["Retry-After"] = "1"
    return response


def api_error_response(error: ApiError):
    body = error.body if error.body is not None else error_body(
        error.message, error.code, error.details
    )
    response = jsonify(body)
    response.status_code = error.status
    retry_after = getattr(error, "retry_after", 1 if error.status == 503 else None)
    if retry_after is not None:
        response.headers["Retry-After"] = str(retry_after)
    return response


def register(app: Flask) -> None:
    app.register_error_handler(ApiError, api_error_response)
    app.register_error_handler(HTTPException, http_error_response)

    def db_unavailable(error: Exception):
        log.warning("database unavailable: %s", error.__class__.__name__)
        response = jsonify(error_body("Database is unavailable, retry shortly",
                                      "database_unavailable"))
        response.status_code = 503
        response.headers["Retry-After"] = "1"
        return response

    app.register_error_handler(PoolTimeout, db_unavailable)
    app.register_error_handler(OperationalError, db_unavailable)

    def db_error(error: DBAPIError):
        if error.connection_invalidated:
            return db_unavailable(error)
        return internal_error(error)

    app.register_error_handler(DBAPIError, db_error)

    def internal_error(error: Exception):
        log.exception("unhandled error", exc_info=error)  # also Sentry's event, when set up
        response = jsonify(error_body("Internal server error", "internal_error"))
        response.status_code = 500
        return response

    app.register_error_handler(Exception, internal_error)
