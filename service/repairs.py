"""The count of keys reconciliation repaired, per read path: kept in the queue Redis
(persistent and shared by every process: the scheduler repairs, the web is scraped) and
exposed on ``/metrics`` as ``cache_repairs_total{path}``."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from flask import Flask
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from service.bootstrap import AppState
from storage.rebuild import PATHS


def repairs_key(state: AppState) -> str:
    return f"{state.settings.key_prefix}reconcile:repairs"


def record_repairs(state: AppState, repairs: Mapping[str, int]) -> None:
    """Add one reconciliation run's repairs (0 too: the label exists from the start)."""
    pipe = state.queue_redis.pipeline(transaction=False)
    for path, n in repairs.items():
        pipe.hincrby(repairs_key(state), path, n)
    pipe.execute()


def repairs_total(state: AppState) -> dict[str, int]:
    raw = state.queue_redis.hgetall(repairs_key(state))
    return {k.decode(): int(v) for k, v in raw.items()}


class RepairsCollector(Collector):
    """``cache_repairs_total{path}`` for ``/metrics``, read live from the queue Redis (the
    scheduler that repairs is another process than the web that is scraped)."""

    def __init__(self, app: Flask) -> None:
        self.app = app

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily("cache_repairs", "Cached keys reconciliation repaired",
                                     labels=["path"])
        try:
            totals = repairs_total(self.app.extensions["hc"])
        except Exception:  # noqa: BLE001 - a scrape must not fail because Redis is down
            totals = {}
        for path in PATHS:
            family.add_metric([path], totals.get(path, 0))
        yield family
