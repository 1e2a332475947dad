"""Bearer-JWT auth as API.md gives it: HS256, ``sub`` a positive int (int or string),
``exp`` required, ``role: "admin"`` optional.

Decorators put the caller in ``flask.g.user`` (a ``Caller``) and mark the operation as
secured in the OpenAPI document. Failures raise ``Unauthorized`` (401) or ``Forbidden``
(403) in the API error format.

A client sends the same token with every request until it expires, and verifying it
(base64, three JSON parses, the HMAC) was a fifth of a warm cached read's CPU (issue 15's
profile). So each process remembers the tokens it verified: a bounded LRU keyed by the
secret and the raw token, holding the caller and ``exp``. A remembered token is
re-checked against ``exp`` on every use (expired: 401 ``token_expired``, as a fresh
decode says); failures are never remembered, so each bad token is verified again.
"""

from __future__ import annotations

import functools
import threading
import time
from collections import OrderedDict
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
    return _verify(token, secret)[0]


def _verify(token: str, secret: str) -> tuple[Caller, float]:
    """``decode_token`` and the token's ``exp`` (seconds since the epoch)."""
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
    # PyJWT compares int(exp) with the clock: so does TokenCache.
    return Caller(sub, claims.get("role") == "admin"), float(int(claims["exp"]))


class TokenCache:
    """Tokens verified by this process: ``(secret, token) -> (Caller, exp)``, LRU-bounded.

    A hit costs a dict lookup and a clock read instead of the signature check; only
    successful verifications are stored, and a stored token past its ``exp`` is refused
    (and dropped) exactly as PyJWT refuses it (``exp <= now``: expired).
    """

    def __init__(self, capacity: int = 8192, clock: Callable[[], float] = time.time) -> None:
        self.capacity = capacity
        self.clock = clock
        self._entries: OrderedDict[tuple[str, str], tuple[Caller, float]] = OrderedDict()
        self._lock = threading.Lock()

    def decode(self, token: str, secret: str) -> Caller:
        key = (secret, token)
        with self._lock:
            found = self._entries.get(key)
            if found is not None:
                self._entries.move_to_end(key)
        if found is None:
            found = _verify(token, secret)  # raises: nothing stored
            with self._lock:
                self._entries[key] = found
                while len(self._entries) > self.capacity:
                    self._entries.popitem(last=False)
        caller, exp = found
        if exp <= self.clock():
            with self._lock:
                self._entries.pop(key, None)
            raise Unauthorized("Token has expired", code="token_expired")
        return caller

    def __len__(self) -> int:
        return len(self._entries)


TOKENS = TokenCache()


def _decode_header(header: str) -> Caller:
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("Authorization header must be 'Bearer <token>'", code="invalid_token")
    return TOKENS.decode(token.strip(), current_app.config["JWT_SECRET"])


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
