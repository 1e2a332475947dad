"""Per-caller rate limits (API.md "Conventions"): ``429`` + the JSON error + ``Retry-After``.

Anonymous callers are counted per client address (``TRUSTED_PROXY_HOPS`` says how many
proxies' ``X-Forwarded-For`` to believe), signed-in callers per user id, and the admin
fan-out per caller on top. Defaults: 300, 3,000 and 10 a minute (``RATE_LIMIT_*``; 0 turns
one off). Ops endpoints and CORS preflights are never limited. The counting is
``cache/rate_limits.py``: shared across processes through Redis, at no round trip on the
request path (the fan-out's small limit is counted exactly, one round trip).
"""

from __future__ import annotations

from flask import Flask, request

from cache.keys import Keyspace
from cache.rate_limits import Limit, RateCounters
from service.auth import peek_caller
from service.errors import ApiError
from service.settings import Settings

EXEMPT_ENDPOINTS = frozenset({"ops.healthz", "ops.readyz", "metrics.metrics",
                              "api-docs.openapi_json"})
FANOUT_ENDPOINT = "activity_feed.fan_out"


class RateLimited(ApiError):
    status, code = 429, "rate_limited"

    def __init__(self, retry_after: int) -> None:
        super().__init__("Too many requests, retry later")
        self.retry_after = retry_after


def init_app(app: Flask, settings: Settings, redis) -> None:
    """Install the limits as a ``before_request`` hook, when any is on."""
    window = settings.rate_limit_window
    user = Limit("req", settings.rate_limit_user, window)
    anonymous = Limit("req", settings.rate_limit_anonymous, window)
    fan_out = Limit("fanout", settings.rate_limit_fanout, window)
    if not (user.per_window or anonymous.per_window or fan_out.per_window):
        return
    counters = RateCounters(redis, Keyspace(settings.key_prefix),
                            settings.rate_limit_sync_interval)
    app.extensions["hc.rate_limits"] = counters

    @app.before_request
    def _limit() -> None:
        if request.endpoint in EXEMPT_ENDPOINTS or request.method == "OPTIONS":
            return
        caller = peek_caller()
        tag = f"u:{caller.id}" if caller else f"a:{request.remote_addr or 'unknown'}"
        limit = user if caller else anonymous
        wait = counters.hit(tag, limit) if limit.per_window else None
        if wait is None and fan_out.per_window and request.endpoint == FANOUT_ENDPOINT:
            wait = counters.hit_now(tag, fan_out)
        if wait is not None:
            raise RateLimited(wait)
