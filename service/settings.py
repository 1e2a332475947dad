"""Every setting of the service, read from environment variables in one place.

``Settings.from_env()`` is the only reader of ``os.environ`` for configuration; the app
factory, the workers and the scripts all build their settings here. Each field's
environment variable and default are documented in README.md (keep the two in step).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from croniter import croniter

# The servers every process needs; nothing here starts them (``make run`` does, for
# development: scripts/embedded.py).
SERVER_URL_VARS = ("DATABASE_URL", "REDIS_URL")
MIN_JWT_SECRET_BYTES = 32
# `make run` (scripts/run) keeps a generated development secret here, under DATA_DIR, and
# hands it to its processes as JWT_SECRET; `flask token` falls back to it. The service
# itself never reads it.
DEV_SECRET_FILE = "jwt-secret"


class NotConfigured(SystemExit):
    """A required setting is missing or unsafe. A ``SystemExit`` so that every entry point
    (``create_app`` under gunicorn or ``flask``, the worker, the scheduler) stops at once
    with its one-line message and a non-zero status, rather than a traceback, a silently
    created database or a service that accepts tokens signed with a public secret."""


def require_server_urls(database_url: str, redis_url: str) -> None:
    """Raise ``NotConfigured`` naming each unset variable and how to get servers."""
    missing = [
        var for var, url in zip(SERVER_URL_VARS, (database_url, redis_url), strict=True) if not url
    ]
    if missing:
        verb = "is" if len(missing) == 1 else "are"
        raise NotConfigured(
            f"error: {' and '.join(missing)} {verb} not set. Point it at your server "
            "(see README.md, Configuration), or run `make run`, which starts embedded "
            "PostgreSQL and Redis for development and sets both."
        )


def require_jwt_secret(secret: str) -> None:
    """Raise ``NotConfigured`` unless ``secret`` has at least ``MIN_JWT_SECRET_BYTES``."""
    if len(secret.encode()) < MIN_JWT_SECRET_BYTES:
        raise NotConfigured(
            f"error: JWT_SECRET must be set to at least {MIN_JWT_SECRET_BYTES} bytes (it signs "
            "every token); make one with: python3 -c 'import secrets; "
            "print(secrets.token_urlsafe(48))'. `make run` keeps a development secret in "
            "$DATA_DIR/jwt-secret."
        )

# Days an activity of each type is kept before retention cleanup removes it.
DEFAULT_ACTIVITY_RETENTION_DAYS: dict[str, int] = {
    "fast_reminder": 30,
    "devotional_reminder": 30,
    "fast_start": 90,
    "fast_join": 180,
    "fast_leave": 180,
    "devotional_available": 90,
    "milestone": 365,
    "event": 180,
}

DEFAULT_RANKING_WEIGHTS: dict[str, float] = {
    "recency": 0.15,
    "social": 0.25,
    "interaction": 0.20,
    "engagement": 0.15,
    "collective": 0.15,
    "post_type": 0.10,
}


def _bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError(f"not a boolean: {raw!r}")


def _cron(raw: str) -> str:
    """A 5-field cron expression (``minute hour day month weekday``), read in UTC."""
    value = " ".join(raw.split())
    if len(value.split()) != 5 or not croniter.is_valid(value):
        raise ValueError(f"not a 5-field cron expression: {raw!r}")
    return value


def _origins(raw: str) -> tuple[str, ...]:
    """A comma list of origins, each ``http(s)://host[:port]`` (no path, no ``*``),
    returned lower-cased in the order given, without repeats."""
    origins: list[str] = []
    for part in filter(None, (p.strip() for p in raw.split(","))):
        try:
            url = urlsplit(part)
            port_ok = url.port is None or url.port > 0  # .port raises on a bad port
        except ValueError as exc:
            raise ValueError(f"not an origin: {part!r}") from exc
        if (url.scheme not in {"http", "https"} or not url.hostname or not port_ok
                or url.username is not None or url.password is not None
                or url.path not in {"", "/"} or url.query or url.fragment
                or "*" in part):
            raise ValueError(f"not an origin (scheme://host[:port]): {part!r}")
        origin = f"{url.scheme}://{url.netloc}".lower()
        if origin not in origins:
            origins.append(origin)
    return tuple(origins)


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def _log_level(raw: str) -> str:
    """A logging level name in any case (``info`` as granian spells it), upper-cased."""
    value = raw.strip().upper()
    if value not in LOG_LEVELS:
        raise ValueError(f"not a log level ({', '.join(LOG_LEVELS)}): {raw!r}")
    return value


def _weights(raw: str) -> dict[str, float]:
    """Parse ``recency=0.2,social=0.3`` over the defaults."""
    weights = dict(DEFAULT_RANKING_WEIGHTS)
    for part in filter(None, (p.strip() for p in raw.split(","))):
        name, _, value = part.partition("=")
        if name not in weights:
            raise ValueError(f"unknown ranking weight {name!r}")
        weights[name] = float(value)
    return weights


@dataclass(frozen=True)
class Settings:
    # Connections. Required by every process (``require_servers``); only ``make run``, the
    # bench and the test fixtures start embedded servers under data_dir for empty ones.
    database_url: str = ""
    redis_url: str = ""
    rq_redis_url: str = ""  # empty = same as redis_url
    data_dir: str = "./.data"
    # Security. Required, at least MIN_JWT_SECRET_BYTES (``require_runtime``).
    jwt_secret: str = ""
    public_base_url: str = "http://127.0.0.1:8000"  # links (next/previous); from_env: PORT
    # Web.
    web_concurrency: int = 2
    db_pool_size: int = 10
    db_pool_timeout: float = 2.0  # seconds waiting for a pooled connection before a 503
    max_body_bytes: int = 1024 * 1024
    # Browser origins allowed by CORS (service/cors.py), e.g. ("https://app.example.com",);
    # empty: no CORS headers at all. Never "*".
    cors_allowed_origins: tuple[str, ...] = ()
    # Cache behaviour.
    cache_mode: str = "on"  # "off" = every read from Postgres (benchmark baseline)
    key_prefix: str = "hc:"  # every Redis key starts with this (tests give each test its own)
    redis_read_timeout: float = 0.1
    redis_connect_timeout: float = 0.1
    breaker_failures: int = 3  # consecutive Redis errors that open the breaker
    breaker_cooldown: float = 2.0  # seconds before a half-open probe
    lease_ttl_ms: int = 3000  # single-flight fill lease
    lease_wait_ms: int = 1000  # how long a losing reader waits for the winner's fill
    idle_ttl: int = 7 * 24 * 3600  # TTL of per-user keys, refreshed on use
    page_cache_ttl: int = 300
    fellows_ttl: int = 300
    collectives_ttl: int = 300
    interaction_stats_ttl: int = 600
    ranked_candidates_recent: int = 500  # personalized feed: newest live posts considered
    ranked_candidates_social: int = 250  # ...plus this many from fellows and from collectives
    ranked_cache_entries: int = 200  # ...of which the first this many are cached per viewer
    # Jobs.
    queue_prefix: str = ""  # RQ queue names are <prefix>default, <prefix>warm (tests isolate)
    outbox_relay_interval: int = 10  # seconds
    reconcile_interval: int = 300  # seconds between sampled reconciliations (jobs/reconcile.py)
    reconcile_sample: int = 50  # users per read path each reconciliation checks
    use_async_activity_feed: bool = False
    activity_queue: str = "default"  # RQ queue of activity jobs (a worker must listen)
    activity_retry_intervals: tuple[int, ...] = (10, 30, 60)  # seconds between 3 retries
    activity_fanout_chunk: int = 200  # users per fan-out job
    activity_queue_max_depth: int = 500  # fan-outs refused (503) while this many jobs wait
    activity_cleanup_cron: str = "0 2 * * *"  # daily retention cleanup, cron in UTC: 02:00
    # Read paths.
    max_recent_reel_views: int = 50
    # Community feed (section 3): see cache/community_feed.py.
    recent_cache_size: int = 5000  # newest posts kept in the recent sorted set
    author_cache_size: int = 200  # newest posts per author set (following feed)
    trending_window_hours: int = 168  # posts this young are ranked by trending
    trending_max_posts: int = 10_000  # cap of the trending window
    trending_recompute_interval: int = 60  # seconds between trending rebuilds
    trending_snapshot_ttl: int = 1800  # a trending walk's snapshot lives this long
    trending_snapshot_reuse: int = 30  # walks starting within this share a snapshot
    ranking_weights: dict[str, float] = field(
        default_factory=lambda: dict(DEFAULT_RANKING_WEIGHTS)
    )
    ranking_log_sample: float = 0.01  # share of ranked pages logged as a decision line
    activity_retention_days: dict[str, int] = field(
        default_factory=lambda: dict(DEFAULT_ACTIVITY_RETENTION_DAYS)
    )
    # Rate limits (service/rate_limit.py): requests per window; 0 = off.
    rate_limit_anonymous: int = 300  # per client address
    rate_limit_user: int = 3000  # per signed-in user
    rate_limit_fanout: int = 10  # admin activity fan-outs per caller
    rate_limit_window: int = 60  # seconds
    rate_limit_sync_interval: float = 0.5  # seconds between a process's counter syncs
    trusted_proxy_hops: int = 0  # proxies whose X-Forwarded-For gives the client address
    # Live updates (API section 6, service/stream_server.py).
    stream_port: int = 8001  # the Procfile's `stream` process listens here
    stream_public_url: str = ""  # the stream's URL for browsers; "" = 127.0.0.1:STREAM_PORT
    stream_heartbeat: float = 15.0  # seconds between `: ping` comments
    stream_queue_max: int = 64  # messages waiting for one client before it is dropped
    stream_write_timeout: float = 30.0  # seconds one write may block before the client is dropped
    demo_pages: bool = False  # serve /demo/unread
    # Ops.
    log_level: str = "INFO"
    sentry_dsn: str = ""  # empty = no error tracking (service/error_tracking.py)
    sentry_environment: str = "production"
    sentry_traces_sample_rate: float = 0.0  # share of requests traced (0 = errors only)

    @property
    def queue_redis_url(self) -> str:
        return self.rq_redis_url or self.redis_url

    @property
    def stream_url(self) -> str:
        """Where browsers open the event stream (the demo page uses it)."""
        return self.stream_public_url or f"http://127.0.0.1:{self.stream_port}/api/v1/stream"

    @property
    def cache_enabled(self) -> bool:
        return self.cache_mode != "off"

    def require_runtime(self) -> Settings:
        """Return self; raise ``NotConfigured`` if DATABASE_URL or REDIS_URL is unset or
        JWT_SECRET is shorter than ``MIN_JWT_SECRET_BYTES``."""
        require_server_urls(self.database_url, self.redis_url)
        require_jwt_secret(self.jwt_secret)
        return self

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Build settings from ``env`` (default ``os.environ``), then apply ``overrides``.

        Raises ``ValueError`` naming the variable when a value does not parse.
        """
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for var, (name, parse) in _ENV_VARS.items():
            if var in env:
                try:
                    values[name] = parse(env[var])
                except ValueError as exc:
                    raise ValueError(f"{var}: {exc}") from exc
        values.update(overrides)
        settings = cls(**values)
        if settings.cache_mode not in {"on", "off"}:
            raise ValueError("CACHE_MODE must be 'on' or 'off'")
        if not 0.0 <= settings.ranking_log_sample <= 1.0:
            raise ValueError("RANKING_LOG_SAMPLE must be from 0 to 1")
        if settings.ranked_cache_entries < 50:  # at least one page of the largest size
            raise ValueError("RANKED_CACHE_ENTRIES must be at least 50")
        if not 1 <= settings.max_recent_reel_views <= 127:  # + a sentinel: <= 128, listpack
            raise ValueError("MAX_RECENT_REEL_VIEWS must be from 1 to 127")
        if "PUBLIC_BASE_URL" not in env and "public_base_url" not in overrides:
            port = env.get("PORT") or "8000"
            settings = settings.replace(public_base_url=f"http://127.0.0.1:{port}")
        if not settings.public_base_url.startswith(("http://", "https://")):
            raise ValueError("PUBLIC_BASE_URL must start with http:// or https://")
        return settings.replace(public_base_url=settings.public_base_url.rstrip("/"))


_ENV_VARS: dict[str, tuple[str, Any]] = {
    "DATABASE_URL": ("database_url", str),
    "REDIS_URL": ("redis_url", str),
    "RQ_REDIS_URL": ("rq_redis_url", str),
    "DATA_DIR": ("data_dir", str),
    "JWT_SECRET": ("jwt_secret", str),
    "PUBLIC_BASE_URL": ("public_base_url", str),
    "WEB_CONCURRENCY": ("web_concurrency", int),
    "DB_POOL_SIZE": ("db_pool_size", int),
    "DB_POOL_TIMEOUT": ("db_pool_timeout", float),
    "CORS_ALLOWED_ORIGINS": ("cors_allowed_origins", _origins),
    "CACHE_MODE": ("cache_mode", str),
    "CACHE_KEY_PREFIX": ("key_prefix", str),
    "REDIS_READ_TIMEOUT": ("redis_read_timeout", float),
    "REDIS_CONNECT_TIMEOUT": ("redis_connect_timeout", float),
    "BREAKER_FAILURES": ("breaker_failures", int),
    "BREAKER_COOLDOWN": ("breaker_cooldown", float),
    "CACHE_IDLE_TTL": ("idle_ttl", int),
    "PAGE_CACHE_TTL": ("page_cache_ttl", int),
    "FELLOWS_CACHE_TTL": ("fellows_ttl", int),
    "COLLECTIVES_CACHE_TTL": ("collectives_ttl", int),
    "INTERACTION_STATS_TTL": ("interaction_stats_ttl", int),
    "RANKED_CANDIDATES_RECENT": ("ranked_candidates_recent", int),
    "RANKED_CANDIDATES_SOCIAL": ("ranked_candidates_social", int),
    "RANKED_CACHE_ENTRIES": ("ranked_cache_entries", int),
    "OUTBOX_RELAY_INTERVAL": ("outbox_relay_interval", int),
    "RECONCILE_INTERVAL": ("reconcile_interval", int),
    "RECONCILE_SAMPLE": ("reconcile_sample", int),
    "RQ_QUEUE_PREFIX": ("queue_prefix", str),
    "USE_ASYNC_ACTIVITY_FEED": ("use_async_activity_feed", _bool),
    "ACTIVITY_QUEUE": ("activity_queue", str),
    "ACTIVITY_RETRY_INTERVALS": (
        "activity_retry_intervals", lambda raw: tuple(int(p) for p in raw.split(",") if p.strip())
    ),
    "ACTIVITY_FANOUT_CHUNK": ("activity_fanout_chunk", int),
    "ACTIVITY_QUEUE_MAX_DEPTH": ("activity_queue_max_depth", int),
    "ACTIVITY_CLEANUP_CRON": ("activity_cleanup_cron", _cron),
    "MAX_RECENT_REEL_VIEWS": ("max_recent_reel_views", int),
    "RECENT_CACHE_SIZE": ("recent_cache_size", int),
    "AUTHOR_CACHE_SIZE": ("author_cache_size", int),
    "TRENDING_WINDOW_HOURS": ("trending_window_hours", int),
    "TRENDING_MAX_POSTS": ("trending_max_posts", int),
    "TRENDING_RECOMPUTE_INTERVAL": ("trending_recompute_interval", int),
    "TRENDING_SNAPSHOT_TTL": ("trending_snapshot_ttl", int),
    "TRENDING_SNAPSHOT_REUSE": ("trending_snapshot_reuse", int),
    "RANKING_WEIGHTS": ("ranking_weights", _weights),
    "RATE_LIMIT_ANONYMOUS": ("rate_limit_anonymous", int),
    "RATE_LIMIT_USER": ("rate_limit_user", int),
    "RATE_LIMIT_FANOUT": ("rate_limit_fanout", int),
    "RATE_LIMIT_WINDOW": ("rate_limit_window", int),
    "RATE_LIMIT_SYNC_INTERVAL": ("rate_limit_sync_interval", float),
    "TRUSTED_PROXY_HOPS": ("trusted_proxy_hops", int),
    "RANKING_LOG_SAMPLE": ("ranking_log_sample", float),
    "STREAM_PORT": ("stream_port", int),
    "STREAM_PUBLIC_URL": ("stream_public_url", str),
    "STREAM_HEARTBEAT": ("stream_heartbeat", float),
    "STREAM_QUEUE_MAX": ("stream_queue_max", int),
    "STREAM_WRITE_TIMEOUT": ("stream_write_timeout", float),
    "DEMO_PAGES": ("demo_pages", _bool),
    "LOG_LEVEL": ("log_level", _log_level),
    "SENTRY_DSN": ("sentry_dsn", str),
    "SENTRY_ENVIRONMENT": ("sentry_environment", str),
    "SENTRY_TRACES_SAMPLE_RATE": ("sentry_traces_sample_rate", float),
}
