"""Every setting of the service, read from environment variables in one place.

``Settings.from_env()`` is the only reader of ``os.environ`` for configuration; the app
factory, the workers and the scripts all build their settings here. Each field's
environment variable and default are documented in README.md (keep the two in step).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

DEV_JWT_SECRET = "dev-insecure-secret-change-me"

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
    # Connections. Empty URL = start an embedded server under data_dir.
    database_url: str = ""
    redis_url: str = ""
    rq_redis_url: str = ""  # empty = same as redis_url
    data_dir: str = "./.data"
    # Security.
    jwt_secret: str = DEV_JWT_SECRET
    # Web.
    web_concurrency: int = 2
    db_pool_size: int = 10
    db_pool_timeout: float = 2.0  # seconds waiting for a pooled connection before a 503
    max_body_bytes: int = 1024 * 1024
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
    # Jobs.
    queue_prefix: str = ""  # RQ queue names are <prefix>default, <prefix>warm (tests isolate)
    outbox_relay_interval: int = 10  # seconds
    reconcile_interval: int = 300  # seconds between sampled reconciliations (jobs/reconcile.py)
    reconcile_sample: int = 50  # users per read path each reconciliation checks
    use_async_activity_feed: bool = False
    activity_queue: str = "default"  # RQ queue of activity jobs (a worker must listen)
    activity_retry_intervals: tuple[int, ...] = (10, 30, 60)  # seconds between 3 retries
    activity_fanout_chunk: int = 200  # users per fan-out job
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
    # Ops.
    log_level: str = "INFO"

    @property
    def queue_redis_url(self) -> str:
        return self.rq_redis_url or self.redis_url

    @property
    def cache_enabled(self) -> bool:
        return self.cache_mode != "off"

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
        if not 1 <= settings.max_recent_reel_views <= 127:  # + a sentinel: <= 128, listpack
            raise ValueError("MAX_RECENT_REEL_VIEWS must be from 1 to 127")
        if settings.jwt_secret == DEV_JWT_SECRET:
            log.warning(
                "JWT_SECRET is not set: using the insecure development secret. "
                "Set JWT_SECRET before exposing this service."
            )
        return settings


_ENV_VARS: dict[str, tuple[str, Any]] = {
    "DATABASE_URL": ("database_url", str),
    "REDIS_URL": ("redis_url", str),
    "RQ_REDIS_URL": ("rq_redis_url", str),
    "DATA_DIR": ("data_dir", str),
    "JWT_SECRET": ("jwt_secret", str),
    "WEB_CONCURRENCY": ("web_concurrency", int),
    "DB_POOL_SIZE": ("db_pool_size", int),
    "DB_POOL_TIMEOUT": ("db_pool_timeout", float),
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
    "MAX_RECENT_REEL_VIEWS": ("max_recent_reel_views", int),
    "RECENT_CACHE_SIZE": ("recent_cache_size", int),
    "AUTHOR_CACHE_SIZE": ("author_cache_size", int),
    "TRENDING_WINDOW_HOURS": ("trending_window_hours", int),
    "TRENDING_MAX_POSTS": ("trending_max_posts", int),
    "TRENDING_RECOMPUTE_INTERVAL": ("trending_recompute_interval", int),
    "TRENDING_SNAPSHOT_TTL": ("trending_snapshot_ttl", int),
    "TRENDING_SNAPSHOT_REUSE": ("trending_snapshot_reuse", int),
    "RANKING_WEIGHTS": ("ranking_weights", _weights),
    "RANKING_LOG_SAMPLE": ("ranking_log_sample", float),
    "LOG_LEVEL": ("log_level", str),
}
