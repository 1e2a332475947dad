"""Functions that tests enqueue (RQ imports them by path in the worker)."""

from __future__ import annotations

import time

import redis


def boom(message: str) -> None:
    raise RuntimeError(message)


def record(url: str, key: str, seconds: float = 0.0) -> str:
    """Append a start and an end mark to ``key`` around a sleep: shows a job ran once, whole."""
    client = redis.Redis.from_url(url)
    client.rpush(key, "start")
    time.sleep(seconds)
    client.rpush(key, "end")
    client.close()
    return "done"
