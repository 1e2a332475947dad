"""``/metrics`` and the per-request JSON log line.

Request count and latency per endpoint (the route's name, never the raw path), the cache
outcome counters of ``cache.stats``, RQ queue depths and failed jobs (read from the queue
Redis at scrape time), and Redis/DB errors. Under the web server, ``PROMETHEUS_MULTIPROC_DIR``
(set by web.py, or gunicorn.conf.py) makes every worker process's counters add up in each
scrape; the live gauges of dead workers are dropped at each scrape.
"""

from __future__ import annotations

import glob
import logging
import os
import time
from collections.abc import Iterator

import orjson
from flask import Blueprint, Flask, Response, g, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import REGISTRY, Collector

from cache import stats
from service import write_access_line
from service.failed_jobs import counts_by_type
from service.repairs import RepairsCollector
from storage.cache_state import outbox_backlog

log = logging.getLogger("service.access")

REQUESTS = Counter(
    "http_requests_total", "HTTP requests", ["endpoint", "method", "status"]
)
LATENCY = Histogram(
    "http_request_duration_seconds",
    "HTTP request latency",
    ["endpoint"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
DB_ERRORS = Counter("db_errors_total", "Requests that failed on the database", ["endpoint"])
WORKERS = Gauge(
    "web_worker_processes", "Web worker processes serving", multiprocess_mode="livesum"
)

bp = Blueprint("metrics", __name__)


class QueueCollector(Collector):
    """RQ queue depths and failed-job counts, read live from the queue Redis."""

    def __init__(self, app: Flask) -> None:
        self.app = app

    def collect(self) -> Iterator[GaugeMetricFamily]:
        state = self.app.extensions["hc"]
        depth = GaugeMetricFamily("rq_queue_depth", "Jobs waiting per queue", labels=["queue"])
        failed = GaugeMetricFamily(
            "rq_failed_jobs", "Failed jobs per queue and job type", labels=["queue", "job"]
        )
        try:
            queues = state.queues()
            for queue in queues:
                depth.add_metric([queue.name], queue.count)
            for (queue_name, func), n in sorted(counts_by_type(queues).items()):
                failed.add_metric([queue_name, func], n)
        except Exception:  # noqa: BLE001 - a scrape must not fail because Redis is down
            pass
        yield depth
        yield failed


class OutboxCollector(Collector):
    """The outbox backlog, read from Postgres at scrape time (one statement): rows the relay
    has not cleared (requests apply their own rows but leave them to the relay) and the
    age of the oldest, beside the relay interval, so an alert can say "older than twice
    the relay interval" without knowing the configuration."""

    def __init__(self, app: Flask) -> None:
        self.app = app

    def collect(self) -> Iterator[GaugeMetricFamily]:
        state = self.app.extensions["hc"]
        interval = GaugeMetricFamily(
            "cache_outbox_relay_interval_seconds", "Seconds between outbox relay runs"
        )
        interval.add_metric([], state.settings.outbox_relay_interval)
        yield interval
        try:
            with state.db.read() as session:
                rows, age = outbox_backlog(session)
        except Exception:  # noqa: BLE001 - a scrape must not fail because Postgres is down
            return
        yield GaugeMetricFamily("cache_outbox_pending",
                                "Outbox rows the relay has not cleared yet (applied by their "
                                "request or not)", value=rows)
        yield GaugeMetricFamily("cache_outbox_oldest_age_seconds",
                                "Age of the oldest outbox row (0 when empty)", value=age)


def _registry(app: Flask) -> CollectorRegistry:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = CollectorRegistry()
        for collector in list(REGISTRY._collector_to_names):  # noqa: SLF001
            registry.register(collector)
    registry.register(QueueCollector(app))
    registry.register(OutboxCollector(app))
    registry.register(RepairsCollector(app))
    return registry


def drop_dead_workers(metrics_dir: str) -> list[int]:
    """Fold the live gauges of web workers that no longer run out of the multiprocess
    metrics (what gunicorn's ``child_exit`` hook does; granian has no such hook, so it is
    done at scrape time). Returns the pids dropped."""
    from prometheus_client import multiprocess

    dead = set()
    for path in glob.glob(os.path.join(metrics_dir, "gauge_live*_*.db")):
        pid = os.path.basename(path).rsplit("_", 1)[-1].removesuffix(".db")
        if pid.isdigit() and not _alive(int(pid)):
            dead.add(int(pid))
    for pid in dead:
        multiprocess.mark_process_dead(pid, metrics_dir)
    return sorted(dead)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


@bp.get("/metrics")
def metrics() -> Response:
    from flask import current_app

    registry = current_app.extensions["hc.metrics_registry"]
    metrics_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if metrics_dir:
        drop_dead_workers(metrics_dir)
    return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)


def init_app(app: Flask) -> None:
    app.extensions["hc.metrics_registry"] = _registry(app)
    app.register_blueprint(bp)
    WORKERS.set(1)

    @app.before_request
    def _start() -> None:
        g.started = time.perf_counter()
        g.cache_outcomes = stats.begin_request()

    @app.after_request
    def _finish(response):
        started = g.pop("started", None)
        if started is None:
            return response
        elapsed = time.perf_counter() - started
        endpoint = request.endpoint or "unmatched"
        status = response.status_code
        stats.child(REQUESTS, endpoint, request.method, str(status)).inc()
        stats.child(LATENCY, endpoint).observe(elapsed)
        if status == 503:
            stats.child(DB_ERRORS, endpoint).inc()
        outcomes = stats.end_request()
        if endpoint != "metrics.metrics" and log.isEnabledFor(logging.INFO):
            line = orjson.dumps({
                "method": request.method,
                "path": request.path,
                "endpoint": endpoint,
                "status": status,
                "ms": round(elapsed * 1000, 2),
                "cache": outcomes,
            })
            write_access_line(log, line.decode())
        return response
