"""The ``stream`` process: API section 6's ``GET /api/v1/stream``, server-sent events.

    python -m service.stream_server          # listens on 127.0.0.1:$STREAM_PORT

An aiohttp server on one event loop (no Flask, no WSGI threads): each open stream is one
coroutine, one small queue and one socket. Events come from the users' Redis streams
(``cache/live_events.py``): one Pub/Sub subscription tells the process which users have new
entries, and one pipelined ``XRANGE`` per batch of woken connections reads them.

- Auth before the stream starts: ``ticket`` (single use, ``GETDEL``) or an
  ``Authorization: Bearer`` JWT; otherwise a JSON ``401``. Redis down at that moment: ``503``.
- Resume: ``Last-Event-ID`` (header, or the ``last_event_id`` query parameter for a client
  that reconnects with a new ticket) replays what was missed, else a ``reset`` event; a new
  stream starts with an ``id:``-only message, so a client has a resume point at once.
- ``: ping`` every ``STREAM_HEARTBEAT`` s, from a timer, whatever Redis does. Each stream
  has its own phase (its first ping comes a random 50-100 % of the interval after it
  opened), so the process sends a steady trickle of pings, never all of them at once: a
  burst of 10,000 socket writes would hold every event behind it.
- A client more than ``STREAM_QUEUE_MAX`` messages behind, or whose socket accepts nothing
  for ``STREAM_WRITE_TIMEOUT`` s, is dropped; others are unaffected.
- Redis down: streams stay open and keep pinging; when Redis answers again every
  connection catches up from its last id (or gets ``reset``: the history was lost).
- Garbage collection (``python -m``, not when the app is embedded): 10,000 streams are
  about a million objects, and a full pass of CPython's cyclic collector over them holds
  the loop for a few hundred ms of CPU (seconds of a loaded host), with every event behind
  it. So the process freezes (``gc.freeze``) what survives a young collection once the
  streams being opened are up: the collector's automatic passes then scan only newer
  objects. Frozen objects are still freed by reference counting; cycles among them (those
  of closed streams) wait for a full collection, run when the streams closed since the last
  one reach a quarter of those open (``GcPolicy``), about as often as CPython would run one
  under churn, and never just because many streams opened or many events went out.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import gc
import heapq
import itertools
import logging
import random
import resource
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import orjson
import redis.asyncio as aioredis
from aiohttp import web
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from cache import live_events
from cache.keys import Keyspace
from service import configure_logging
from service.activity_feed import present
from service.auth import decode_token
from service.errors import Unauthorized
from service.settings import Settings

log = logging.getLogger("service.stream_server")

PING = b": ping\n\n"
PING_TICK = 0.05  # seconds between the heartbeat loop's passes (at most)
PING_BATCH = 200  # pings sent per pass at most (the rest are due at the next pass)
LAG_WINDOW = 100  # heartbeat passes whose lateness /healthz reports (5 s of them)
RETRY_MS = 2000  # the client's reconnect delay (the SSE ``retry:`` field)
REDIS_BACKOFF = (0.2, 0.5, 1.0, 2.0)  # seconds between reconnects to Redis
LOOP_CONNECTIONS = 8  # Redis connections of the loops (one is the Pub/Sub subscription)
OPEN_CONNECTIONS = 32  # ...and of the streams being opened
REDIS_POOL_WAIT = 20.0  # seconds a command may wait for a pooled connection (then: 503)
HUB_KEY = web.AppKey("hub", object)
ORIGINS_KEY = web.AppKey("origins", set)


@dataclass
class GcPolicy:
    """When the stream process freezes its objects, and when it collects them in full
    (see the module docstring). ``decide`` is pure; ``run`` does it."""

    every: float = 1.0  # seconds between decisions at most
    full_share: float = 0.25  # closed / open streams that call for a full collection
    full_min: int = 1000  # ...but not for fewer closed streams than this
    opened: int = 0  # streams up since the last freeze
    closed: int = 0  # streams closed since the last full collection
    last: float = 0.0

    def decide(self, now: float, open_streams: int) -> str | None:
        """``"full"``, ``"freeze"`` or None (nothing to do yet)."""
        if now - self.last < self.every:
            return None
        if self.closed >= max(self.full_min, self.full_share * open_streams):
            return "full"
        return "freeze" if self.opened else None

    def run(self, now: float, open_streams: int) -> str | None:
        action = self.decide(now, open_streams)
        if action is None:
            return None
        self.last = now
        if action == "full":
            gc.unfreeze()
            gc.collect()
            self.closed = 0
        else:
            gc.collect(1)  # the young garbage goes first: only survivors are frozen
        gc.freeze()
        self.opened = 0
        return action


@dataclass(eq=False)
class Connection:
    user_id: int
    queue: asyncio.Queue[bytes | None]
    last_id: str = "0-0"
    ready: bool = False
    closed: bool = False
    transport: Any = None
    touched: float = field(default_factory=time.monotonic)

    def send(self, data: bytes) -> bool:
        """Queue ``data``; False (and the connection dropped) if the client is too far
        behind."""
        if self.closed:
            return False
        try:
            self.queue.put_nowait(data)
        except asyncio.QueueFull:
            self.drop()
            return False
        return True

    def drop(self) -> None:
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.abort()
            with contextlib.suppress(asyncio.QueueFull):
                self.queue.put_nowait(None)


def encode(event: live_events.Event) -> bytes:
    """One SSE message: ``id``, ``event`` and ``data`` lines (a ``mark`` is id-only)."""
    if event.name == live_events.MARK:
        return b"id: %s\n\n" % event.id.encode()
    data = event.data
    if event.name == live_events.ACTIVITY and b'"item"' in data:
        body = orjson.loads(data)
        body["item"] = present(body["item"], datetime.now(UTC))
        data = orjson.dumps(body)
    return b"id: %s\nevent: %s\ndata: %s\n\n" % (event.id.encode(), event.name.encode(), data)


def reset_message(entry_id: str) -> bytes:
    return b"id: %s\nevent: reset\ndata: {}\n\n" % entry_id.encode()


class Hub:
    """Every open stream of this process, and the loops that feed them."""

    def __init__(self, settings: Settings, aredis: Any, keys: Keyspace,
                 opening: Any = None, gc_policy: GcPolicy | None = None) -> None:
        self.settings = settings
        self.redis = aredis  # the loops' client
        # Opening streams (tickets, replay, resume point) use their own connections, so a
        # burst of opens never starves the loops (a heartbeat's ping waiting for a pooled
        # connection would read as an outage).
        self.opening = opening if opening is not None else aredis
        self.keys = keys
        self.by_user: dict[int, set[Connection]] = {}
        self.dirty: set[Connection] = set()
        self.recheck: set[Connection] = set()  # after an outage: full replay check
        self.wake = asyncio.Event()
        # ``redis_up`` is what /healthz reports: the last command of any loop answered.
        # ``lost`` remembers that something failed since the last (re)subscription: the
        # next one makes every connection catch up (a ping that answers again clears the
        # health flag, not the catch-up).
        self.redis_up = True
        self.lost = False
        self.subscribed = False  # the Pub/Sub subscription is up
        self.tasks: list[asyncio.Task[Any]] = []
        self.delivered = 0
        self.opening_users: list[tuple[int, asyncio.Future[str]]] = []
        self.opening_wake = asyncio.Event()
        # (when the next ping is due, a tie-breaker, the connection): closed ones are
        # dropped when they come up.
        self.pings: list[tuple[float, int, Connection]] = []
        self.ping_seq = itertools.count()
        self.gc_policy = gc_policy  # None: the process's collector is left alone
        # How late the heartbeat loop's timer fired, over its last passes (s): the loop's
        # lag, which every event waits too (/healthz reports the worst of them).
        self.lags: collections.deque[float] = collections.deque(maxlen=LAG_WINDOW)
        self.open_streams = 0

    # Connections.

    def add(self, conn: Connection) -> None:
        self.by_user.setdefault(conn.user_id, set()).add(conn)
        self.open_streams += 1
        due = time.monotonic() + self.settings.stream_heartbeat * random.uniform(0.5, 1.0)
        heapq.heappush(self.pings, (due, next(self.ping_seq), conn))

    def remove(self, conn: Connection) -> None:
        conns = self.by_user.get(conn.user_id)
        if conns is not None and conn in conns:
            self.open_streams -= 1
            conns.discard(conn)
            if not conns:
                del self.by_user[conn.user_id]
        self.dirty.discard(conn)
        self.recheck.discard(conn)
        if self.gc_policy is not None and conn.ready:
            self.gc_policy.closed += 1

    def connections(self) -> list[Connection]:
        return [c for conns in self.by_user.values() for c in conns]

    def mark(self, conns: Any) -> None:
        self.dirty.update(c for c in conns if c.ready)
        if self.dirty:
            self.wake.set()

    # Loops.

    def start(self) -> None:
        self.tasks = [asyncio.create_task(coro) for coro in
                      (self._listen(), self._deliver(), self._heartbeat(), self._resume())]

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for conn in self.connections():
            conn.drop()

    def _redis_failed(self, exc: BaseException, what: str) -> None:
        if self.redis_up:
            log.warning("Redis unavailable (%s): streams keep pinging: %s", what, exc)
        self.redis_up = False
        self.lost = True

    def healthy(self) -> bool:
        """What /healthz reports: the subscription is up and the last command answered."""
        return self.subscribed and self.redis_up

    def _redis_answered(self) -> None:
        if not self.redis_up:
            log.warning("Redis answers again")
        self.redis_up = True

    async def _listen(self) -> None:
        """Pub/Sub: which users have new entries. After every (re)subscription all
        connections catch up, so nothing published while we were away is missed."""
        attempt = 0
        while True:
            pubsub = self.redis.pubsub()
            try:
                await pubsub.subscribe(live_events.channel(self.keys))
                if self.lost:
                    log.warning("Redis subscription back: streams catch up")
                    # Redis may have lost their history: check each origin too.
                    self.recheck.update(c for c in self.connections() if c.ready)
                    self.lost = False
                self.subscribed = True
                self._redis_answered()
                attempt = 0
                self.mark(self.connections())
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True,
                                                       timeout=5.0)
                    if message is None:
                        continue
                    for part in message["data"].split(b","):
                        conns = self.by_user.get(int(part))
                        if conns:
                            self.mark(conns)
            except (RedisError, OSError, ValueError) as exc:
                self.subscribed = False
                self._redis_failed(exc, "subscribe")
                await asyncio.sleep(REDIS_BACKOFF[min(attempt, len(REDIS_BACKOFF) - 1)])
                attempt += 1
            finally:
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()

    async def _deliver(self) -> None:
        """Read the new entries of woken connections in one pipeline per batch."""
        while True:
            await self.wake.wait()
            self.wake.clear()
            batch = [c for c in self.dirty if not c.closed]
            self.dirty.clear()
            if not batch:
                continue
            if self.recheck:
                batch = await self._recheck(batch)
            try:
                results = await live_events.fetch_after(
                    self.redis, self.keys, [(c.user_id, c.last_id) for c in batch])
            except (RedisError, OSError) as exc:
                self._redis_failed(exc, "read")
                self.dirty.update(batch)  # tried again after the pause
                await asyncio.sleep(REDIS_BACKOFF[0])
                self.wake.set()
                continue
            self._redis_answered()
            for conn, events in zip(batch, results, strict=True):
                if events is None:
                    await self._reset(conn)
                    continue
                for event in events:
                    if not conn.send(encode(event)):
                        break
                    conn.last_id = event.id
                    self.delivered += 1

    async def _recheck(self, batch: list[Connection]) -> list[Connection]:
        """Catch up the connections of ``batch`` that wait for a full check (replay or
        ``reset``); returns the others."""
        rest = []
        for conn in batch:
            if conn not in self.recheck:
                rest.append(conn)
                continue
            try:
                missed = await live_events.replay(self.redis, self.keys, conn.user_id,
                                                  conn.last_id)
            except (RedisError, OSError) as exc:
                self._redis_failed(exc, "replay")
                self.dirty.add(conn)
                continue
            self.recheck.discard(conn)
            if missed.reset:
                await self._reset(conn)
                continue
            for event in missed.events:
                if not conn.send(encode(event)):
                    break
                conn.last_id = event.id
        return rest

    async def _reset(self, conn: Connection) -> None:
        try:
            top = await live_events.resume_point(self.redis, self.keys, conn.user_id)
        except (RedisError, OSError) as exc:
            self._redis_failed(exc, "reset")
            self.dirty.add(conn)
            return
        conn.last_id = top
        conn.send(reset_message(top))

    def ping_due(self, now: float) -> set[int]:
        """Ping the connections whose heartbeat is due (at most ``PING_BATCH``), each
        again one interval later; returns the users whose stream TTL wants a refresh."""
        interval = self.settings.stream_heartbeat
        stale: set[int] = set()
        sent = 0
        while self.pings and self.pings[0][0] <= now and sent < PING_BATCH:
            _, _, conn = heapq.heappop(self.pings)
            if conn.closed:
                continue
            conn.send(PING)
            sent += 1
            heapq.heappush(self.pings, (now + interval, next(self.ping_seq), conn))
            if now - conn.touched > live_events.STREAM_TTL / 4:
                conn.touched = now
                stale.add(conn.user_id)
        return stale

    async def _heartbeat(self) -> None:
        """Pings as they fall due (see the module docstring), and once an interval a
        Redis ping (what /healthz reports) with the TTL refresh of connected users."""
        interval = self.settings.stream_heartbeat
        tick = min(PING_TICK, interval / 4)
        check_at = time.monotonic() + interval
        stale: set[int] = set()
        while True:
            slept = time.monotonic()
            await asyncio.sleep(tick)
            now = time.monotonic()
            self.lags.append(max(0.0, now - slept - tick))
            stale |= self.ping_due(now)
            if self.gc_policy is not None:
                self.gc_policy.run(now, self.open_streams)
            if now < check_at:
                continue
            check_at = now + interval
            try:
                await self.redis.ping()
                if stale:
                    await live_events.touch(self.redis, self.keys, stale)
                stale = set()
            except (RedisError, OSError) as exc:
                self._redis_failed(exc, "ping")
            else:
                self._redis_answered()  # /healthz follows the ping both ways

    # Opening a stream.

    async def open(self, conn: Connection, last_id: str | None) -> bytes:
        """The first messages of a stream: the replay (or ``reset``), or the resume point.
        The caller writes them, then marks the connection ready (``ready``)."""
        if last_id:
            missed = await live_events.replay(self.opening, self.keys, conn.user_id,
                                              last_id)
            if not missed.reset:
                conn.last_id = last_id
                out = []
                for event in missed.events:
                    out.append(encode(event))
                    conn.last_id = event.id
                return b"".join(out)
        top = await self.resume_point(conn.user_id)
        conn.last_id = top
        return reset_message(top) if last_id else b"id: %s\n\n" % top.encode()

    async def resume_point(self, user_id: int) -> str:
        """``live_events.resume_point``, batched with the other streams being opened."""
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.opening_users.append((user_id, future))
        self.opening_wake.set()
        return await future

    async def _resume(self) -> None:
        """One pipeline of resume points per batch of opening streams (a burst of 10,000
        reconnects is a few hundred round trips, not 30,000)."""
        while True:
            await self.opening_wake.wait()
            self.opening_wake.clear()
            batch, self.opening_users = self.opening_users, []
            if not batch:
                continue
            try:
                tops = await live_events.resume_points(self.opening, self.keys,
                                                       [u for u, _ in batch])
            except (RedisError, OSError) as exc:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for user_id, future in batch:
                if not future.done():
                    future.set_result(tops[user_id])

    def ready(self, conn: Connection) -> None:
        conn.ready = True
        if self.gc_policy is not None:
            self.gc_policy.opened += 1
        self.mark([conn])  # entries appended since the first messages were read


def _json_error(status: int, message: str, code: str, headers: dict[str, str] | None = None
                ) -> web.Response:
    return web.json_response({"error": message, "code": code}, status=status,
                             headers=headers, dumps=lambda v: orjson.dumps(v).decode())


def allowed_origins(settings: Settings) -> set[str]:
    base = urlsplit(settings.public_base_url)
    return {*settings.cors_allowed_origins, f"{base.scheme}://{base.netloc}"}


async def authenticate(request: web.Request, hub: Hub) -> int:
    """The caller's user id. Raises ``Unauthorized``; a Redis error if Redis is down."""
    ticket = request.query.get("ticket")
    if ticket is not None:
        user_id = await live_events.redeem_ticket(hub.opening, hub.keys, ticket)
        if user_id is None:
            raise Unauthorized("Invalid, used or expired stream ticket", code="invalid_ticket")
        return user_id
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("A stream ticket or a bearer token is required",
                           code="missing_credentials")
    return decode_token(token.strip(), hub.settings.jwt_secret).id


async def stream(request: web.Request) -> web.StreamResponse:
    hub: Hub = request.app[HUB_KEY]  # type: ignore[assignment]
    cors: dict[str, str] = {}
    origin = request.headers.get("Origin")
    if origin and origin in request.app[ORIGINS_KEY]:
        cors = {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}
    try:
        user_id = await authenticate(request, hub)
    except Unauthorized as exc:
        return _json_error(401, exc.message, exc.code, cors)
    except (RedisError, OSError):
        return _json_error(503, "Live updates are unavailable", "stream_unavailable",
                           {**cors, "Retry-After": "2"})
    last_id = request.headers.get("Last-Event-ID") or request.query.get("last_event_id")
    conn = Connection(user_id, asyncio.Queue(hub.settings.stream_queue_max))
    response: web.StreamResponse | None = None
    hub.add(conn)
    try:
        try:
            first = await hub.open(conn, last_id)
        except (RedisError, OSError):
            return _json_error(503, "Live updates are unavailable", "stream_unavailable",
                               {**cors, "Retry-After": "2"})
        response = web.StreamResponse(headers={
            "Content-Type": "text/event-stream", "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no", **cors,
        })
        await response.prepare(request)
        conn.transport = request.transport
        await response.write(b"retry: %d\n\n" % RETRY_MS + first)
        hub.ready(conn)
        timeout = hub.settings.stream_write_timeout
        while True:
            data = await conn.queue.get()
            if data is None or conn.closed:
                break
            async with asyncio.timeout(timeout):
                await response.write(data)
    except (ConnectionError, TimeoutError, asyncio.CancelledError, RuntimeError):
        pass
    finally:
        conn.closed = True
        hub.remove(conn)
    return response if response is not None else web.Response(status=503)


async def healthz(request: web.Request) -> web.Response:
    hub: Hub = request.app[HUB_KEY]  # type: ignore[assignment]
    return web.json_response({"status": "ok", "streams": len(hub.connections()),
                              "redis": "ok" if hub.healthy() else "down",
                              "loop_lag_ms": round(1000 * max(hub.lags, default=0.0), 1)})


def make_app(settings: Settings, manage_gc: bool = False) -> web.Application:
    """The aiohttp application (its Redis client and loops start with it). ``manage_gc``:
    the process is the stream's own, so it may freeze its objects (``GcPolicy``)."""
    app = web.Application()
    app[ORIGINS_KEY] = allowed_origins(settings)

    async def lifecycle(app: web.Application):
        # No silent retries: an outage must surface, so that every connection catches up
        # (Pub/Sub messages published while the subscription was away are lost).
        # Blocking pools: a burst of opening streams (10,000 clients reconnecting after a
        # restart) waits for a connection instead of failing with "Too many connections"
        # (redis-py's default pool caps at 100, then raises: 503s).
        def pool(size: int) -> Any:
            return aioredis.BlockingConnectionPool.from_url(
                settings.redis_url, max_connections=size, timeout=REDIS_POOL_WAIT,
                socket_connect_timeout=1.0, socket_timeout=None, health_check_interval=0,
                retry=Retry(NoBackoff(), 0))

        pools = [pool(LOOP_CONNECTIONS), pool(OPEN_CONNECTIONS)]
        aredis, opening = (aioredis.Redis(connection_pool=p) for p in pools)
        hub = Hub(settings, aredis, Keyspace(settings.key_prefix), opening,
                  GcPolicy() if manage_gc else None)
        app[HUB_KEY] = hub
        hub.start()
        yield
        await hub.stop()
        for client, p in zip((aredis, opening), pools, strict=True):
            await client.aclose()
            await p.disconnect()

    app.cleanup_ctx.append(lifecycle)
    for path in ("/api/v1/stream", "/api/v1/stream/"):
        app.router.add_get(path, stream)
    app.router.add_get("/healthz", healthz)
    return app


def raise_open_files_limit(wanted: int = 65536) -> int:
    """Raise this process's open-files soft limit towards ``wanted`` (capped by the hard
    limit); returns the new soft limit. Every stream is one socket."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return target
    return soft


def main() -> None:
    """Run until SIGTERM / SIGINT (aiohttp's run_app stops the loop on them)."""
    settings = Settings.from_env().require_runtime()
    configure_logging(settings.log_level)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    raise_open_files_limit()
    log.info("stream listening on 127.0.0.1:%d", settings.stream_port)
    web.run_app(make_app(settings, manage_gc=True), host="127.0.0.1",
                port=settings.stream_port, backlog=4096, print=None, handle_signals=True,
                shutdown_timeout=2.0, access_log=None)


if __name__ == "__main__":
    main()
