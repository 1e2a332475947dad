"""A circuit breaker for the cache Redis.

Closed: calls go to Redis. After ``failures`` consecutive errors it opens: reads go to
Postgres without waiting on Redis timeouts. After ``cooldown`` seconds one caller is let
through as a probe (half-open); success closes it, failure re-opens it. Transitions are
logged once each, never per request.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from cache.stats import BREAKER_OPEN

log = logging.getLogger(__name__)

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


class Breaker:
    def __init__(
        self,
        failures: int = 3,
        cooldown: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        self.failures = failures
        self.cooldown = cooldown
        self._clock = clock
        self._lock = threading.Lock()
        self._state = CLOSED
        self._errors = 0
        self._opened_at = 0.0
        self._probing = False
        # Called (outside the lock) when Redis comes back, before the breaker closes:
        # the hook makes the cache consistent again (drains the outbox). If it raises,
        # the breaker stays open.
        self.on_close = on_close
        BREAKER_OPEN.set(0)

    @property
    def state(self) -> str:
        return self._state

    def allow(self) -> bool:
        """True if a call may go to Redis now."""
        if self._state == CLOSED:  # the usual answer, without the lock (one read)
            return True
        with self._lock:
            if self._state == CLOSED:
                return True
            if self._state == OPEN and self._clock() - self._opened_at >= self.cooldown:
                self._state = HALF_OPEN
                self._probing = False
            if self._state == HALF_OPEN and not self._probing:
                self._probing = True
                return True
            return False

    def success(self) -> None:
        if self._state == CLOSED and not self._errors:  # nothing to reset: no lock
            return
        with self._lock:
            if self._state == CLOSED:
                self._errors = 0
                return
            if self._state != HALF_OPEN:
                return
        # Half-open probe succeeded: restore consistency before trusting the cache.
        if self.on_close is not None:
            try:
                self.on_close()
            except Exception:  # noqa: BLE001 - any failure keeps the breaker open
                log.warning("cache recovery hook failed; breaker stays open", exc_info=True)
                self.failure()
                return
        with self._lock:
            if self._state == HALF_OPEN:
                self._state = CLOSED
                self._errors = 0
                self._probing = False
                BREAKER_OPEN.set(0)
                log.warning("cache redis is back: breaker closed, reads use the cache again")

    def failure(self) -> None:
        with self._lock:
            self._errors += 1
            if self._state == HALF_OPEN or (
                self._state == CLOSED and self._errors >= self.failures
            ):
                was = self._state
                self._state = OPEN
                self._opened_at = self._clock()
                self._probing = False
                BREAKER_OPEN.set(1)
                if was == CLOSED:
                    log.warning(
                        "cache redis failing (%d errors): breaker open, reads go to Postgres",
                        self._errors,
                    )
