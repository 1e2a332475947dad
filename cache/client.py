"""The cache client: one Redis connection pool, short timeouts, a breaker, counters.

Every Redis call of a read path goes through ``Cache.run(path, fn)``, which raises
``CacheUnavailable`` instead of a Redis error; callers then answer from Postgres.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import redis
from redis.exceptions import NoScriptError, RedisClusterException, RedisError, ResponseError

from cache import stats
from cache.breaker import CLOSED, HALF_OPEN, Breaker
from cache.keys import Keyspace
from cache.scripts import load_all

T = TypeVar("T")

# A Redis Cluster client raises RedisClusterException (not a RedisError) for commands it
# cannot route, e.g. keys of one call in different slots: the cache is unusable for that
# call, the answer comes from Postgres.
CACHE_ERRORS = (RedisError, RedisClusterException)


class CacheUnavailable(Exception):
    """Redis is down, slow or the breaker is open: answer from Postgres."""


class _NoValue:
    """Sentinel for "not in the cache" so a miss is never confused with a cached None."""

    def __repr__(self) -> str:
        return "NO_VALUE"

    def __bool__(self) -> bool:
        return False


NO_VALUE: Any = _NoValue()


def connect(url: str, read_timeout: float = 0.1, connect_timeout: float = 0.1) -> redis.Redis:
    """A Redis client for ``url`` with short timeouts (the cache must never stall a request).

    A ``redis://`` URL whose server is a cluster is not detected here; use
    ``redis+cluster://`` (our own scheme) to get a ``RedisCluster`` client.
    """
    if url.startswith("redis+cluster://"):
        return _cluster_class().from_url(
            "redis://" + url.removeprefix("redis+cluster://"),
            socket_timeout=read_timeout,
            socket_connect_timeout=connect_timeout,
        )
    return redis.Redis.from_url(
        url,
        socket_timeout=read_timeout,
        socket_connect_timeout=connect_timeout,
        health_check_interval=0,
    )


def get_many(r: Any, keys: list[str]) -> list[bytes | None]:
    """The values of ``keys`` (None where missing) in one round trip per node.

    One ``MGET`` on a single Redis, whatever the keys' slots: a third of the CPU of a
    pipeline of as many GETs, which redis-py packs and parses one by one. On a cluster,
    where one MGET must stay in one slot, redis-py's ``mget_nonatomic`` groups the keys
    by slot and pipelines the groups.
    """
    if not keys:
        return []
    if isinstance(r, redis.Redis):
        return r.mget(keys)
    return r.mget_nonatomic(keys)


def packed_client(r: Any) -> bool:
    """``r`` is a plain redis-py client on redis-py's own pooled connections (not a
    cluster, not a fake, not a single-connection client): ``pipelined`` may pack for it."""
    pool = getattr(r, "connection_pool", None)
    return (type(r) is redis.Redis and r.connection is None and pool is not None
            and pool.connection_class.__module__.startswith("redis."))


def pipelined(r: Any, commands: Sequence[tuple[Any, ...]], raw: bool = False) -> list[Any]:
    """The replies of ``commands`` (each a tuple of arguments, e.g. ``("HGETALL", key)``)
    in one round trip, parsed as ``pipe.execute_command(*command)`` parses them (the
    client's response callbacks, without per-command options: ``ZRANGE ... WITHSCORES``
    answers the flat list); ``raw``: the replies as the connection's parser reads them,
    no callbacks. The first error reply is raised once every reply is read.

    On a plain client (``packed_client``) the commands are packed by hiredis and sent on
    one pooled connection without redis-py's ``Pipeline`` object, whose set-up,
    per-command bookkeeping and reset were most of a warm read's Redis CPU (issue 15's
    profiles); a failed attempt is retried as the pipeline retries it (the connection's
    ``Retry``, disconnecting first), and a connection left by any other exception is
    disconnected, so no half-read reply is ever handed to the next caller. Any other
    client (a cluster: one pipeline per node, in parallel) runs a pipeline.
    """
    if not commands:
        return []
    if not packed_client(r):
        pipe = r.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command)
        return pipe.execute()
    pool = r.connection_pool
    # ``get_connection`` without redis-py's deprecated-arguments check (it inspects the
    # call's arguments every time; we pass none).
    take = getattr(type(pool).get_connection, "__wrapped__", None)
    conn = take(pool) if take is not None else pool.get_connection()
    callbacks = {} if raw else r.response_callbacks
    found: dict[Any, Any] = {}  # callbacks by command name, looked up once per call
    packed = [b"".join(map(_pack_command, commands))] if _pack_command is not None else None

    def attempt() -> list[Any]:
        conn.send_packed_command(packed or conn.pack_commands(commands))
        replies: list[Any] = []
        error: ResponseError | None = None
        for command in commands:
            try:
                reply = conn.read_response()
            except ResponseError as exc:  # a whole reply: the connection stays in step
                error = error or exc
                replies.append(exc)
                continue
            name = command[0]
            callback = found.get(name, found)
            if callback is found:
                callback = found[name] = callbacks.get(name)
            replies.append(callback(reply) if callback is not None else reply)
        if error is not None:
            raise error
        return replies

    try:
        return conn.retry.call_with_retry(attempt, lambda _error: conn.disconnect())
    except ResponseError:
        raise
    except BaseException:
        conn.disconnect()
        raise
    finally:
        pool.release(conn)


try:  # hiredis's packer called directly: redis-py wraps it in a Python function per command
    from hiredis import pack_command as _pack_command
except ImportError:  # pragma: no cover - hiredis is a dependency
    _pack_command = None


@functools.cache
def _cluster_class() -> type:
    """``RedisCluster`` whose pipelines accept RENAME/RENAMENX.

    redis-py refuses them in cluster pipelines, but a rename within one slot (our keys of
    one operation share a hash tag) is legal; a cross-slot one still fails in Redis.
    """
    from redis.cluster import RedisCluster

    class Cluster(RedisCluster):
        def pipeline(self, *args: Any, **kwargs: Any) -> Any:
            pipe = super().pipeline(*args, **kwargs)
            pipe.rename = lambda src, dst: pipe.execute_command("RENAME", src, dst)
            pipe.renamenx = lambda src, dst: pipe.execute_command("RENAMENX", src, dst)
            return pipe

    return Cluster


class Cache:
    """The cache Redis, as the read paths see it."""

    def __init__(
        self,
        client: redis.Redis,
        keys: Keyspace,
        breaker: Breaker | None = None,
        enabled: bool = True,
        idle_ttl: int = 7 * 24 * 3600,
        lease_ttl_ms: int = 3000,
        lease_wait_ms: int = 150,
    ) -> None:
        self.redis = client
        self.keys = keys
        self.breaker = breaker or Breaker()
        self.enabled = enabled
        self.idle_ttl = idle_ttl
        self.lease_ttl_ms = lease_ttl_ms
        self.lease_wait_ms = lease_wait_ms

    def run(self, path: str, fn: Callable[[redis.Redis], T]) -> T:
        """Run ``fn(redis)`` as one guarded unit (normally one pipelined round trip).

        Raises ``CacheUnavailable`` if the cache is off, the breaker is open or Redis fails.
        """
        if not self.enabled or not self.breaker.allow():
            raise CacheUnavailable(path)
        try:
            stats.child(stats.REDIS_CALLS, path).inc()
            if self.breaker.state == HALF_OPEN:
                # This call is the breaker's probe. Keys may be stale from writes whose
                # apply failed during the outage: reach Redis and recover first (success()
                # drains the outbox), so the probe never answers from a stale key.
                self.redis.ping()
                self.breaker.success()
                if self.breaker.state != CLOSED:
                    raise CacheUnavailable(path)
            result = self._call(fn)
        except CACHE_ERRORS as exc:
            stats.child(stats.REDIS_ERRORS, path).inc()
            stats.count(path, "error")
            self.breaker.failure()
            raise CacheUnavailable(path) from exc
        self.breaker.success()
        return result

    def run_unguarded(self, path: str, fn: Callable[[redis.Redis], T]) -> T:
        """Like ``run`` but ignores the breaker (recovery work that must reach Redis)."""
        if not self.enabled:
            raise CacheUnavailable(path)
        try:
            return self._call(fn)
        except CACHE_ERRORS as exc:
            stats.child(stats.REDIS_ERRORS, path).inc()
            raise CacheUnavailable(path) from exc

    def _call(self, fn: Callable[[redis.Redis], T]) -> T:
        """``fn(redis)``; if Redis lost its script cache, load the scripts and retry once
        (every script and op is idempotent, so a partly run pipeline may run again)."""
        try:
            return fn(self.redis)
        except NoScriptError:
            load_all(self.redis)
            return fn(self.redis)

    def ping(self) -> bool:
        try:
            return bool(self.redis.ping())
        except RedisError:
            return False
