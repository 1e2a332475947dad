"""Whole-keyspace operations for operators: SCAN (never KEYS), batch deletes."""

from __future__ import annotations

from cache.client import Cache


def clear_keyspace(cache: Cache, batch: int = 500) -> int:
    """Delete every key under the cache's prefix; returns how many. Works on a cluster
    (the cluster client scans every node; deletes go one key at a time per slot)."""
    deleted = 0
    pending: list[str] = []
    for key in cache.redis.scan_iter(match=cache.keys.pattern(), count=batch):
        pending.append(key)
        if len(pending) >= batch:
            deleted += _delete(cache, pending)
            pending = []
    if pending:
        deleted += _delete(cache, pending)
    return deleted


def _delete(cache: Cache, keys: list) -> int:
    pipe = cache.redis.pipeline(transaction=False)
    for key in keys:
        pipe.delete(key)
    return sum(pipe.execute())
