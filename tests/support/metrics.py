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


class Costs:
    """SQL statements (``storage.db.DB_QUERIES``) and Redis round trips (one
    ``send_packed_command`` per command or pipeline, per node) of a call."""

    def __init__(self, monkeypatch) -> None:
        from redis.connection import AbstractConnection

        self.trips = 0
        original = AbstractConnection.send_packed_command

        def counting(conn, *args, **kwargs):
            self.trips += 1
            return original(conn, *args, **kwargs)

        monkeypatch.setattr(AbstractConnection, "send_packed_command", counting)

    def of(self, fn) -> tuple[object, int, int]:
        """``(fn(), SQL statements, Redis round trips)``."""
        from storage.db import DB_QUERIES

        sql, trips = counter_total(DB_QUERIES), self.trips
        result = fn()
        return result, int(counter_total(DB_QUERIES) - sql), self.trips - trips
