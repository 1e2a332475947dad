"""The one lease and the one wait: single-flight work across processes.

A lease is a key set with ``SET NX PX`` to a random token: whoever set it does the work
(a fill, a snapshot restore, a scheduled job) and releases it only if the token is still
its own, so a holder whose lease expired never frees someone else's. A crashed holder's
lease expires by itself after ``ttl_ms``.

Those who lose the race ``wait_for`` the winner's result: they poll a read for a bounded
time and then go on without it (callers read Postgres).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from cache.client import NO_VALUE
from cache.scripts import LuaScript

T = TypeVar("T")

POLL_INTERVAL = 0.01  # seconds between a waiter's reads

RELEASE = LuaScript("""
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
""")


class LeaseHeld(Exception):
    """Another process holds this lease right now."""


@dataclass(frozen=True)
class Lease:
    """The lease ``key`` with this process's ``token`` (a fresh one per lease)."""

    key: str
    ttl_ms: int
    token: str = field(default_factory=lambda: uuid.uuid4().hex)

    def take_command(self) -> tuple[Any, ...]:
        """The take as one command (``cache.client.pipelined``); its reply is truthy if
        this lease was taken."""
        return ("SET", self.key, self.token, "NX", "PX", self.ttl_ms)

    def queue_take(self, pipe: Any) -> None:
        """Queue the take on a pipeline; its reply is truthy if this lease was taken."""
        pipe.execute_command(*self.take_command())

    def take(self, client: Any) -> bool:
        """Take the lease now; False if another holder has it."""
        return bool(client.set(self.key, self.token, nx=True, px=self.ttl_ms))

    def release(self, client: Any) -> bool:
        """Free the lease if it is still ours; True if it was (a lease that expired and was
        taken by another holder is left to them)."""
        return bool(RELEASE(keys=[self.key], args=[self.token], client=client))


def wait_for(read: Callable[[], T], wait_ms: int) -> T:
    """Poll ``read()`` until it returns something other than ``NO_VALUE`` or ``wait_ms``
    pass; returns the value or ``NO_VALUE``."""
    deadline = time.monotonic() + wait_ms / 1000
    while time.monotonic() < deadline:
        time.sleep(POLL_INTERVAL)
        value = read()
        if value is not NO_VALUE:
            return value
    return NO_VALUE  # type: ignore[return-value]
