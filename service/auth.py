"""Bearer-JWT auth as API.md gives it: HS256, ``sub`` a positive int (int or string),
``exp`` required, ``role: "admin"`` optional.

Decorators put the caller in ``flask.g.user`` (a ``Caller``) and mark the operation as
secured in the OpenAPI document. Failures raise ``Unauthorized`` (401) or ``Forbidden``
(403) in the API error format.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
from flask import current_app, g, request

from service.errors import Forbidden, Unauthorized
from service.fields import CANONICAL_ID, MAX_ID


@dataclass(frozen=True)
class Caller:
    id: int
    is_admin: bool = False


def make_token(secret: str, user_id: int, admin: bool = False, ttl: int = 3600) -> str:
    claims: dict[str, Any] = {
        "sub": str(user_id),
        "exp": datetime.now(UTC) + timedelta(seconds=ttl),
    }
    if admin:
        claims["role"] = "admin"
    return jwt.encode(claims, secret, algorithm="HS256")


def decode_token(token: str, secret: str) -> Caller:
    """Verify ``token``; raises ``Unauthorized`` with a reason a client can act on."""
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=["HS256"],
            options={"require": ["exp", "sub"], "verify_sub": False},
        )
    except jwt.ExpiredSignatureError as exc:
        raise Unauthorized("Token has expired", code="token_expired") from exc
    except jwt.InvalidTokenError as exc:
        raise Unauthorized("Invalid token", code="invalid_token") from exc
    sub = claims["sub"]
    if isinstance(sub, bool) or not isinstance(sub, int | str):
        raise Unauthorized("Invalid token subject", code="invalid_token")
    if isinstance(sub, str):
        # Canonical ASCII digits only: no sign, no leading zero, no fullwidth digits, and
        # short enough for int() (which refuses over 4,300 digits) and for MAX_ID.
        if not CANONICAL_ID.fullmatch(sub):
            raise Unauthorized("Invalid token subject", code="invalid_token")
        sub = int(sub)
    if not 1 <= sub <= MAX_ID:
        raise Unauthorized("Invalid token subject", code="invalid_token")
    return Caller(sub, claims.get("role") == "admin")


def _decode_header(header: str) -> Caller:
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("Authorization header must be 'Bearer <token>'", code="invalid_token")
    return decode_token(token.strip(), current_app.config["JWT_SECRET"])


def _caller_or_error() -> Caller | Unauthorized | None:
    """The request's caller (None without a header), or the reason its token is refused;
    decoded once per request (the rate limiter asks before the route does)."""
    if "_auth" not in g:
        header = request.headers.get("Authorization", "")
        try:
            g._auth = _decode_header(header) if header else None
        except Unauthorized as exc:
            g._auth = exc
    return g._auth


def peek_caller() -> Caller | None:
    """The caller if the request carries a valid token, else None; never raises."""
    found = _caller_or_error()
    return found if isinstance(found, Caller) else None


def _caller_from_request(required: bool) -> Caller | None:
    found = _caller_or_error()
    if isinstance(found, Unauthorized):
        raise found
    if found is None and required:
        raise Unauthorized("Authentication required", code="authentication_required")
    return found


def _secured(fn: Callable, wrapper: Callable, optional: bool) -> Callable:
    apidoc = dict(getattr(fn, "_apidoc", {}))
    manual = dict(apidoc.get("manual_doc", {}))
    manual["security"] = [{"bearerAuth": []}, {}] if optional else [{"bearerAuth": []}]
    apidoc["manual_doc"] = manual
    wrapper._apidoc = apidoc  # type: ignore[attr-defined]
    return wrapper


def login_required(fn: Callable) -> Callable:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        g.user = _caller_from_request(required=True)
        return fn(*args, **kwargs)

    return _secured(fn, wrapper, optional=False)


def admin_required(fn: Callable) -> Callable:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        g.user = _caller_from_request(required=True)
        if not g.user.is_admin:
            raise Forbidden("Admin role required")
        return fn(*args, **kwargs)

    return _secured(fn, wrapper, optional=False)


def login_optional(fn: Callable) -> Callable:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        g.user = _caller_from_request(required=False)
        return fn(*args, **kwargs)

    return _secured(fn, wrapper, optional=True)
