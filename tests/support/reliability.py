"""Settings for apps on the servers a reliability test owns."""

from __future__ import annotations

import uuid

from service.settings import Settings
from tests.support.auth import JWT_SECRET


def reliability_settings(database_url: str, redis_url: str, **changes) -> Settings:
    """Settings for an app on the servers a test owns (breaker tuned to recover fast)."""
    base = Settings(
        database_url=database_url,
        redis_url=redis_url,
        key_prefix=f"r{uuid.uuid4().hex[:8]}:",
        queue_prefix=f"r{uuid.uuid4().hex[:8]}:",
        jwt_secret=JWT_SECRET,
        db_pool_size=10,
        breaker_cooldown=0.5,
        log_level="WARNING",
        rate_limit_anonymous=0, rate_limit_user=0, rate_limit_fanout=0,
    )
    return base.replace(**changes)
