"""Error tracking with Sentry, on only when ``SENTRY_DSN`` is set.

``init_error_tracking(settings, component)`` is called once per process by the app
factory (``web``) and by the worker and scheduler commands. With no DSN it does nothing,
and every other function here is a no-op, so the service runs the same without Sentry.

What is sent: unhandled errors of requests (the app's JSON 500 handler logs them with
``log.exception``, which the SDK's logging integration turns into an event; Flask's own
hook never sees an exception that an error handler answered), failed RQ jobs
(``RqIntegration``) and errors logged by the scheduler, plus a check-in per scheduled job
run (Sentry Crons, ``checkin``).
What is never sent: request headers, cookies, bodies and query strings, and anything in
the event that looks like a bearer token, a JWT or a password in a URL (``scrub`` walks the
whole event, frame variables and job arguments included). PII collection stays at the
SDK's default, off (``send_default_pii`` is deprecated in the 2.7x SDKs: not passed).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import sentry_sdk
from sentry_sdk.integrations.flask import FlaskIntegration
from sentry_sdk.integrations.rq import RqIntegration

from service.settings import Settings

REDACTED = "[redacted]"
# What a string in an event must not carry: a JWT (three base64url parts, the first a JSON
# header), a bearer credential, the password of a URL (postgresql://user:secret@host/db)
# and a URL's query string (``?password=``, ``?ticket=``; in messages and object reprs).
_SECRETS = (
    (re.compile(r"eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*"), REDACTED),
    (re.compile(r"(?i:bearer)\s+\S+"), REDACTED),
    (re.compile(r"(?<=://)[^/\s:@]+:[^/\s@]+(?=@)"), REDACTED),
    (re.compile(r"((?:https?://|/)[^\s?#'\"<>]*)\?[^\s#'\"<>]+"), rf"\1?{REDACTED}"),
)
_DROPPED_REQUEST_PARTS = ("headers", "cookies", "data", "query_string", "env")


def _scrub_value(value: Any) -> Any:
    if isinstance(value, str):
        for pattern, replacement in _SECRETS:
            value = pattern.sub(replacement, value)
        return value
    if isinstance(value, dict):
        return {k: _scrub_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub_value(v) for v in value]
    return value


def scrub(event: dict[str, Any], hint: dict[str, Any] | None = None) -> dict[str, Any]:
    """``before_send``: drop the request's headers, cookies, body and query string, and
    redact every secret-looking string anywhere in the event."""
    request = event.get("request")
    if isinstance(request, dict):
        for part in _DROPPED_REQUEST_PARTS:
            request.pop(part, None)
    return _scrub_value(event)


def init_error_tracking(settings: Settings, component: str) -> bool:
    """Start the Sentry client for this process (``component``: web, worker, scheduler).
    Returns False, doing nothing, when ``SENTRY_DSN`` is unset."""
    if not settings.sentry_dsn:
        return False
    if sentry_sdk.get_client().is_active():  # the CLI's worker / scheduler: app built first
        sentry_sdk.set_tag("component", component)
        return True
    sentry_sdk.init(
        dsn=settings.sentry_dsn,
        environment=settings.sentry_environment,
        traces_sample_rate=settings.sentry_traces_sample_rate,
        integrations=[FlaskIntegration(), RqIntegration()],
        before_send=scrub,
        before_send_transaction=scrub,
    )
    sentry_sdk.set_tag("component", component)
    return True


@contextmanager
def checkin(
    job: str, interval_s: float | None = None, crontab: str | None = None
) -> Iterator[None]:
    """A Sentry Crons check-in around one run of scheduled ``job`` (in progress, then ok or
    error), with the schedule Sentry should expect: a crontab, or an interval (rounded up to
    whole minutes, Sentry's smallest unit). No-op without a DSN."""
    if not sentry_sdk.get_client().is_active():
        yield
        return
    if crontab:
        schedule: dict[str, Any] = {"type": "crontab", "value": crontab}
    else:
        minutes = max(1, -(-int(interval_s or 60) // 60))
        schedule = {"type": "interval", "value": minutes, "unit": "minute"}
    with sentry_sdk.monitor(monitor_slug=job, monitor_config={"schedule": schedule}):
        yield
