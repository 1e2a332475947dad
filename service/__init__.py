"""The Flask service: ``create_app`` builds everything; nothing connects at import time.

    flask --app service run            # development server
    python web.py                      # production (see Procfile, web.py)
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import orjson
from flask import Flask
from flask_orjson import OrjsonProvider

from service.settings import Settings

# One blueprint per API section; each module exposes ``bp``.
SECTION_MODULES = (
    "service.health",
    "service.admin",
    "service.group_feed",
    "service.activity_feed",
    "service.community_feed",
    "service.ranked_feed",
    "service.profiles",
    "service.recent_reels",
    "service.live_updates",
)


class JsonProvider(OrjsonProvider):
    option = orjson.OPT_NAIVE_UTC | orjson.OPT_NON_STR_KEYS | orjson.OPT_UTC_Z


class LineFormatter(logging.Formatter):
    """``asctime levelname name message``; the time's text is made once per second (the
    access log writes a line per request, and ``strftime`` was a visible part of it)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")
        self._second: tuple[int, str] = (-1, "")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        second = int(record.created)
        cached = self._second
        if cached[0] != second:
            cached = (second, time.strftime(self.default_time_format, self.converter(second)))
            self._second = cached
        return self.default_msec_format % (cached[1], record.msecs)


def configure_logging(level: str) -> None:
    root = logging.getLogger()
    if not any(getattr(h, "_hc", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(LineFormatter())
        handler._hc = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(level)


def create_app(test_config: dict[str, Any] | None = None) -> Flask:
    """Build the app. ``test_config`` may carry ``SETTINGS`` (a ``Settings``) and Flask keys.

    Starts no servers: with DATABASE_URL or REDIS_URL unset, or JWT_SECRET shorter than
    32 bytes, it raises ``NotConfigured`` (a ``SystemExit`` with one line naming the
    variable; ``make run`` provides embedded servers and a development secret). Raises
    ``ValueError`` on invalid configuration.
    """
    # Imported here, not at the top: ``gunicorn.conf.py`` imports ``service.settings``
    # (and so this package) before it sets PROMETHEUS_MULTIPROC_DIR, which must happen
    # before prometheus_client is first imported.
    import importlib

    from service import api as api_module
    from service import (
        cli,
        cors,
        error_tracking,
        errors,
        input_guard,
        metrics,
        rate_limit,
        warming,
    )
    from service.bootstrap import bootstrap
    from service.fields import IdConverter
    from service.server_limits import limit_request_size

    test_config = dict(test_config or {})
    settings: Settings = test_config.pop("SETTINGS", None) or Settings.from_env()
    settings.require_runtime()
    configure_logging(settings.log_level)
    error_tracking.init_error_tracking(settings, "web")

    app = Flask(__name__)
    app.json = JsonProvider(app)
    app.url_map.strict_slashes = False
    app.url_map.converters["id"] = IdConverter
    app.config.update(
        JWT_SECRET=settings.jwt_secret,
        MAX_CONTENT_LENGTH=settings.max_body_bytes,
    )
    app.config.update(test_config)

    app.extensions["hc"] = bootstrap(settings)
    if settings.trusted_proxy_hops:
        from werkzeug.middleware.proxy_fix import ProxyFix

        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=settings.trusted_proxy_hops)  # type: ignore[method-assign]
    # Outermost: over-long URLs and header fields never reach the app (JSON 414 / 431).
    app.wsgi_app = limit_request_size(app.wsgi_app)  # type: ignore[method-assign]
    cors.init_app(app, settings)
    rate_limit.init_app(app, settings, app.extensions["hc"].cache.redis)
    api = api_module.make_api(app)
    errors.register(app)
    input_guard.init_app(app)
    for module_name in SECTION_MODULES:
        module = importlib.import_module(module_name)
        api.register_blueprint(module.bp)
    metrics.init_app(app)
    warming.init_app(app)
    importlib.import_module("service.live_updates").init_app(app)
    cli.init_app(app)
    return app
