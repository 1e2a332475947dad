"""Reading Prometheus counters in-process."""

from __future__ import annotations


def counter_total(counter, outcome: str | None = None) -> float:
    total = 0.0
    for metric in counter.collect():
        for sample in metric.samples:
            if sample.name.endswith("_total") and (
                outcome is None or sample.labels.get("outcome") == outcome
            ):
                total += sample.value
    return total


class CallCounter:
    """Counts the calls of ``cls.method`` (every instance) while the test runs."""

    def __init__(self, monkeypatch, cls: type, method: str) -> None:
        self.count = 0
        original = getattr(cls, method)

        def counting(obj, *args, **kwargs):
            self.count += 1
            return original(obj, *args, **kwargs)

        monkeypatch.setattr(cls, method, counting)

    def of(self, fn) -> tuple[object, int]:
        """``(fn(), calls during it)``."""
        before = self.count
        result = fn()
        return result, self.count - before


def redis_replies(monkeypatch) -> CallCounter:
    """Redis replies read by redis-py (``read_response``), each parsed in Python."""
    from redis.connection import AbstractConnection

    return CallCounter(monkeypatch, AbstractConnection, "read_response")


class Costs:
    """SQL statements (``storage.db.DB_QUERIES``) and Redis round trips (one
    ``send_packed_command`` per command or pipeline, per node) of a call."""

    def __init__(self, monkeypatch) -> None:
        from redis.connection import AbstractConnection

        self.sent = CallCounter(monkeypatch, AbstractConnection, "send_packed_command")

    def of(self, fn) -> tuple[object, int, int]:
        """``(fn(), SQL statements, Redis round trips)``."""
        from storage.db import DB_QUERIES

        sql = counter_total(DB_QUERIES)
        result, trips = self.sent.of(fn)
        return result, int(counter_total(DB_QUERIES) - sql), trips
