"""Shared request counters for the rate limits, at no round trip on the request path.

Fixed windows: one counter per (caller, limit name, window) under the caller's hash tag,
``<prefix>{u:42}:rl:req:60:<window>`` (a cluster spreads callers over its slots). Each
process counts the requests it admits in memory; a background thread adds them to Redis
every ``sync_interval`` seconds in one pipeline and reads back the totals of every
process. ``hit`` judges a request by the last total read plus what this process admitted
since, so the answer costs no Redis call. The price is a bounded overshoot: another
process may have admitted up to one sync interval of requests this one has not seen yet
(4 processes, a 0.5 s interval, a caller at 3,000 a minute: at most ~75 more a minute).

``hit_now`` counts in Redis at once (one round trip, exact), for small limits on slow
endpoints. Redis down: both admit (fail open), logged once per outage; what was counted
meanwhile is added at the next sync that succeeds.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

from redis.exceptions import RedisError

from cache.keys import Keyspace

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Limit:
    name: str  # part of the key: limits of one caller never share a counter
    per_window: int  # requests admitted per window; 0 = no limit
    window: int  # seconds


class RateCounters:
    def __init__(self, redis, keys: Keyspace, sync_interval: float,
                 clock: Callable[[], float] = time.time) -> None:
        self.redis = redis
        self.keys = keys
        self.sync_interval = sync_interval
        self.clock = clock
        self._lock = threading.Lock()
        self._pending: dict[str, int] = defaultdict(int)  # admitted here, not yet in Redis
        self._known: dict[str, int] = {}  # totals of every process at the last sync
        self._ends: dict[str, float] = {}  # window end of every key in use
        self._current: dict[tuple[str, Limit], tuple[str, float]] = {}  # hit's key memo
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._stop = threading.Event()
        self._failing = False

    def key(self, tag: str, limit: Limit, now: float) -> tuple[str, float]:
        """The counter of ``tag``'s current window of ``limit``, and when that window ends."""
        window = int(now // limit.window)
        return (self.keys.key(tag, "rl", limit.name, limit.window, window),
                float((window + 1) * limit.window))

    def hit(self, tag: str, limit: Limit) -> int | None:
        """Admit one request of ``tag`` (None), or say how many seconds it must wait."""
        now = self.clock()
        # The counter's key is made once per caller and window (a caller sends many
        # requests a window); the entries of ended windows are dropped at each sync.
        memo_key = (tag, limit)
        found = self._current.get(memo_key)
        if found is None or not found[1] - limit.window <= now < found[1]:
            found = self._current[memo_key] = self.key(tag, limit, now)
        key, ends = found
        self._ensure_thread()
        with self._lock:
            if self._known.get(key, 0) + self._pending.get(key, 0) >= limit.per_window:
                return max(1, math.ceil(ends - now))
            self._pending[key] += 1
            self._ends[key] = ends
        return None

    def hit_now(self, tag: str, limit: Limit) -> int | None:
        """Like ``hit``, counted in Redis at once."""
        now = self.clock()
        key, ends = self.key(tag, limit, now)
        try:
            pipe = self.redis.pipeline(transaction=False)
            pipe.incr(key)
            pipe.expireat(key, int(ends) + limit.window)
            total = int(pipe.execute()[0])
        except RedisError:
            self._note_failure()
            return None
        return max(1, math.ceil(ends - now)) if total > limit.per_window else None

    def sync(self) -> None:
        """Add this process's counts to Redis; read back every process's totals."""
        now = self.clock()
        with self._lock:
            pending, self._pending = dict(self._pending), defaultdict(int)
            for key in [k for k, ends in self._ends.items() if ends <= now]:
                del self._ends[key]
                self._known.pop(key, None)
                pending.pop(key, None)
            ends = dict(self._ends)
            self._current = {k: v for k, v in self._current.items() if v[1] > now}
        if not ends:
            return
        try:
            pipe = self.redis.pipeline(transaction=False)
            for key, end in ends.items():
                pipe.incrby(key, pending.get(key, 0))
                pipe.expireat(key, int(end) + 60)
            totals = pipe.execute()[0::2]
        except RedisError:
            with self._lock:  # counted again at the next sync that succeeds
                for key, n in pending.items():
                    self._pending[key] += n
            self._note_failure()
            return
        if self._failing:
            self._failing = False
            log.warning("rate limits: Redis answers again, counting resumed")
        with self._lock:
            for key, total in zip(ends, totals, strict=True):
                if key in self._ends:
                    self._known[key] = int(total)

    def _note_failure(self) -> None:
        if not self._failing:
            self._failing = True
            log.warning("rate limits: Redis unavailable, admitting requests until it answers")

    def _ensure_thread(self) -> None:
        # One per process: a thread started before a fork does not run in the child.
        if self._pid == os.getpid():
            return
        with self._lock:
            if self._pid == os.getpid():
                return
            self._thread = threading.Thread(target=self._run, name="rate-limit-sync",
                                            daemon=True)
            self._thread.start()
            self._pid = os.getpid()

    def _run(self) -> None:
        while not self._stop.wait(self.sync_interval):
            try:
                self.sync()
            except Exception:  # noqa: BLE001 - the sync thread must outlive any one error
                log.exception("rate limit sync failed")

    def close(self) -> None:
        self._stop.set()
