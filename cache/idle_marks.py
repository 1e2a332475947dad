"""Per-user activity marks: tell when a user returns after being idle.

``{u:<id>}:active`` lives for the idle TTL and is refreshed on use; when it is missing the
user was idle long enough for their keys to expire, so they are worth warming. Setting the
mark also pushes every per-user key of the read paths back to the idle TTL (refreshed on
use). A small per-process memory skips the Redis calls for users seen in the last minute.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict

from cache.client import Cache, CacheUnavailable
from cache.keys import user_tag
from cache.rebuild import refresh_user_ttls


class ActivityTracker:
    def __init__(self, cache: Cache, remember_seconds: float = 60.0, capacity: int = 10_000):
        self.cache = cache
        self.remember_seconds = remember_seconds
        self.capacity = capacity
        self._seen: OrderedDict[int, float] = OrderedDict()
        self._lock = threading.Lock()

    def key(self, user_id: int) -> str:
        return self.cache.keys.key(user_tag(user_id), "active")

    def touch(self, user_id: int) -> bool:
        """Mark ``user_id`` active; True if they were idle (their mark had expired)."""
        now = time.monotonic()
        with self._lock:
            seen = self._seen.get(user_id)
            if seen is not None and now - seen < self.remember_seconds:
                return False
            self._seen[user_id] = now
            self._seen.move_to_end(user_id)
            while len(self._seen) > self.capacity:
                self._seen.popitem(last=False)
        key, ttl = self.key(user_id), self.cache.idle_ttl
        # The same round trip refreshes the TTL of every per-user key of the read paths
        # (cache/rebuild.py): an active user's keys never expire under them.
        mark = [("set", (key, "1"), {"nx": True, "ex": ttl}), ("expire", (key, ttl), {})]
        try:
            return bool(refresh_user_ttls(self.cache, user_id, first=mark)[0])
        except CacheUnavailable:
            return False
