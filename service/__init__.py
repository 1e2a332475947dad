"""The Flask service: ``create_app`` builds everything; nothing connects at import time.

    flask --app service run            # development server
    python web.py                      # production (see Procfile, web.py)
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from types import FunctionType
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


class App(Flask):
    """``Flask``, remembering which of its functions are plain ``def``s.

    Flask asks ``inspect.iscoroutinefunction`` of every hook and view on every request
    (``ensure_sync``: seven calls per request here, a few percent of a warm read's CPU in
    issue 15's profile). Plain functions are a fixed set, so the answer is kept per
    function; anything else (bound methods, callables) is asked every time, as before."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._plain: set[Callable[..., Any]] = set()

    def ensure_sync(self, func: Callable[..., Any]) -> Callable[..., Any]:
        plain = self._plain
        if func in plain:
            return func
        synced = super().ensure_sync(func)
        if synced is func and type(func) is FunctionType and len(plain) < 4096:
            plain.add(func)
        return synced


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

    def access_line(self, name: str, message: str, created: float) -> str:
        """What ``format`` makes of an INFO record of logger ``name`` (no exception, no
        stack), without the record."""
        second = int(created)
        cached = self._second
        if cached[0] != second:
            cached = (second, time.strftime(self.default_time_format, self.converter(second)))
            self._second = cached
        msecs = int((created - second) * 1000) + 0.0
        return f"{self.default_msec_format % (cached[1], msecs)} INFO {name} {message}"


def _bare_up_to_root(logger: logging.Logger) -> bool:
    """No handler or filter between ``logger`` and the root, and every one propagates."""
    node: Any = logger
    while node is not logging.root:
        if node.handlers or node.filters or not node.propagate:
            return False
        node = node.parent
    return True


def write_access_line(logger: logging.Logger, message: str) -> None:
    """``logger.info(message)``, cheaply when logging is as ``configure_logging`` left it.

    A LogRecord (thread, process and caller lookups), the handler walk and a format per
    request were a tenth of a warm cached read's CPU; with the one handler of
    ``configure_logging`` on the root, nothing on ``logger`` and no filters, the same
    line is formatted and written here. Any other setup (tests' capture handlers, a
    different level or formatter) takes ``logger.info``.
    """
    root = logging.root
    handlers = root.handlers
    if len(handlers) == 1 and not root.filters and _bare_up_to_root(logger):
        handler = handlers[0]
        if (getattr(handler, "_hc", False) and handler.level <= logging.INFO
                and not handler.filters and type(handler.formatter) is LineFormatter):
            text = handler.formatter.access_line(logger.name, message, time.time())
            handler.acquire()
            try:
                stream = handler.stream
                stream.write(text + handler.terminator)
                stream.flush()
            except Exception:  # noqa: BLE001 - as Handler.handleError would
                handler.release()
                logger.info(message)
                return
            handler.release()
            return
    logger.info(message)


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

    app = App(__name__)
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
