"""CORS for browser clients (API.md, Conventions), with flask-cors.

``CORS_ALLOWED_ORIGINS`` (a comma list of origins such as ``https://app.example.com``;
default empty) names the browser origins that may call the API. Empty: the extension is
not installed and no response carries a CORS header. Otherwise, for a request whose
``Origin`` is listed, every response (errors included) carries
``Access-Control-Allow-Origin: <that origin>`` and ``Vary: Origin``; a preflight also gets
the allowed methods, the requested ones of the ``Authorization, Content-Type`` headers
and a ``max-age``. Any other origin, or a request without ``Origin``, gets no allow
header. Never ``*``, never credentials (the API authenticates with bearer tokens).

Origins are matched exactly (case-insensitively): each one is passed to flask-cors as an
escaped, anchored pattern, because flask-cors takes a string with regex characters such
as ``[`` (an IPv6 origin) for a regex.
"""

from __future__ import annotations

import re

from flask import Flask
from flask_cors import CORS

from service.settings import Settings

ALLOWED_METHODS = ["GET", "POST", "PUT", "DELETE"]
ALLOWED_HEADERS = ["Authorization", "Content-Type"]
# Readable by browser code: the wait a 429 or 503 asks for.
EXPOSED_HEADERS = ["Retry-After"]
PREFLIGHT_MAX_AGE = 600  # seconds a browser may reuse a preflight's answer


def origin_pattern(origin: str) -> re.Pattern[str]:
    """Exactly ``origin``, case-insensitively (scheme and host are case-insensitive)."""
    return re.compile(re.escape(origin) + r"\Z", re.IGNORECASE)


def init_app(app: Flask, settings: Settings) -> None:
    """Install flask-cors for ``settings.cors_allowed_origins``; nothing if it is empty."""
    if not settings.cors_allowed_origins:
        return
    CORS(
        app,
        origins=[origin_pattern(o) for o in settings.cors_allowed_origins],
        methods=ALLOWED_METHODS,
        allow_headers=ALLOWED_HEADERS,
        expose_headers=EXPOSED_HEADERS,
        supports_credentials=False,
        send_wildcard=False,
        always_send=False,  # no Origin header: no CORS headers (not the whole list)
        vary_header=True,
        max_age=PREFLIGHT_MAX_AGE,
    )
