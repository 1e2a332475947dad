"""One bootstrap for the web app, the workers and the scripts: settings in, dependencies out.

Nothing connects at import time; ``bootstrap(settings)`` builds the pools (connections are
opened lazily on first use).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import redis
from rq import Queue

from cache.breaker import Breaker
from cache.client import Cache, connect
from cache.fill import Filler
from cache.keys import Keyspace
from cache.live_events import Publisher
from cache.outbox import Applier, relay_outbox
from service.live_updates_ops import FanOutQueue
from service.settings import Settings
from service.uow import UnitOfWork
from storage import cache_state
from storage.db import Database

QUEUE_NAMES = ("default", "warm")


@dataclass
class AppState:
    settings: Settings
    db: Database
    cache: Cache
    filler: Filler
    applier: Applier
    queue_redis: redis.Redis
    # Process-local hints a read checks against Redis before trusting (never the truth):
    # e.g. the trending snapshot new walks shared last (service/community_feed_walk.py).
    hints: dict[str, Any] = field(default_factory=dict)

    def uow(self) -> UnitOfWork:
        return UnitOfWork(self.db, self.applier)

    def load_version(self, row_name: str) -> int:
        return load_version(self.db, row_name)

    def queue(self, name: str = "default") -> Queue:
        """The RQ queue ``name`` (``default`` or ``warm``), under the configured prefix."""
        return queue(self.settings, self.queue_redis, name)

    def queues(self) -> list:
        return [self.queue(name) for name in QUEUE_NAMES]

    def close(self) -> None:
        self.db.dispose()
        self.cache.redis.close()
        self.queue_redis.close()


def queue(settings: Settings, connection: redis.Redis, name: str) -> Queue:
    return Queue(settings.queue_prefix + name, connection=connection)


def load_version(db: Database, row_name: str) -> int:
    """A scope's version in Postgres (0 if never bumped): the truth a lost copy reloads."""
    with db.read() as session:
        return cache_state.get_version(session, row_name)


def load_versions(db: Database, row_names: list[str]) -> dict[str, int]:
    """Many scopes' versions in Postgres, one statement (entity fills after a Redis loss)."""
    with db.read() as session:
        return cache_state.get_versions(session, row_names)


def bootstrap(settings: Settings) -> AppState:
    """Build the service's dependencies. ``settings`` must carry both URLs."""
    if not settings.database_url or not settings.redis_url:
        raise ValueError("bootstrap needs DATABASE_URL and REDIS_URL")
    db = Database(settings.database_url, settings.db_pool_size, settings.db_pool_timeout)
    client = connect(
        settings.redis_url, settings.redis_read_timeout, settings.redis_connect_timeout
    )
    breaker = Breaker(settings.breaker_failures, settings.breaker_cooldown)
    cache = Cache(
        client,
        Keyspace(settings.key_prefix),
        breaker,
        enabled=settings.cache_enabled,
        idle_ttl=settings.idle_ttl,
        lease_ttl_ms=settings.lease_ttl_ms,
        lease_wait_ms=settings.lease_wait_ms,
    )
    applier = Applier(cache)
    filler = Filler(cache, lambda row_name: load_version(db, row_name),
                    lambda row_names: load_versions(db, row_names))
    queue_redis = redis.Redis.from_url(
        settings.queue_redis_url, socket_timeout=2.0, socket_connect_timeout=1.0
    )
    # A group item's events are a job on the default queue (service/live_updates_ops.py).
    fan_outs = FanOutQueue(queue(settings, queue_redis, "default"))
    applier.publisher = Publisher(cache, filler, db, fan_outs)
    state = AppState(
        settings=settings,
        db=db,
        cache=cache,
        filler=filler,
        applier=applier,
        queue_redis=queue_redis,
    )

    def recover() -> None:
        # Redis answers again: apply what the outage left in the outbox before trusting it.
        relay_outbox(db, applier, min_age=0)

    breaker.on_close = recover
    return state
