"""Request-line and header size limits, answered with the contract's JSON error.

gunicorn refused a request line over 4,094 bytes (414) and a header field over 8,190
bytes (431) itself (gunicorn.conf.py made those answers JSON). granian, the web server
since issue 15, accepts request heads up to its buffer (web.py: 64 KiB) and answers only
beyond that, with an empty body. This WSGI middleware keeps the limits and the JSON for
everything the server lets through:

- a URL (path + query) over ``MAX_URL_BYTES``: ``414 {"code": "uri_too_long"}``;
- a header field over ``MAX_FIELD_BYTES`` (name + value): ``431 {"code":
  "header_fields_too_large"}``.

What the server refuses before the app (bad framing, heads over its buffer) can only be
made JSON by a proxy in front: ``ops/nginx/hybrid-cache.conf``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

MAX_URL_BYTES = 8190
MAX_FIELD_BYTES = 8190

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def _refusal(start_response: Callable[..., Any], status: str, code: str,
             message: str) -> list[bytes]:
    body = json.dumps({"error": message, "code": code}).encode()
    start_response(status, [("Content-Type", "application/json"),
                            ("Content-Length", str(len(body))), ("Connection", "close")])
    return [body]


def limit_request_size(app: WsgiApp) -> WsgiApp:
    """``app`` behind the URL and header-field limits above."""

    def guarded(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        url = len(environ.get("PATH_INFO", "")) + len(environ.get("QUERY_STRING", ""))
        if url > MAX_URL_BYTES:
            return _refusal(start_response, "414 URI Too Long", "uri_too_long",
                            f"URL longer than {MAX_URL_BYTES} bytes")
        for key, value in environ.items():
            if (key.startswith("HTTP_") and isinstance(value, str)
                    and len(key) + len(value) > MAX_FIELD_BYTES):
                return _refusal(start_response, "431 Request Header Fields Too Large",
                                "header_fields_too_large",
                                f"a header field is longer than {MAX_FIELD_BYTES} bytes")
        return app(environ, start_response)

    return guarded
