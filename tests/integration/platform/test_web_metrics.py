"""The service's web process as the Procfile runs it: metrics add up across workers, and a
worker that dies is replaced and stops counting as live."""

from __future__ import annotations

import os
import re
import signal
import time

import psutil
import pytest
import requests

from tests.support.servers import web


def _total(body: str, endpoint: str) -> float:
    labels = f'endpoint="{re.escape(endpoint)}",method="GET",status="200"'
    pattern = rf"http_requests_total\{{{labels}\}} (\S+)"
    return sum(float(v) for v in re.findall(pattern, body))


def _scrape(base: str) -> str:
    return requests.get(f"{base}/metrics", headers={"Connection": "close"}, timeout=10).text


def _workers(base: str) -> float:
    found = re.search(r"^web_worker_processes (\S+)$", _scrape(base), re.M)
    return float(found.group(1)) if found else 0.0


@pytest.fixture
def two_workers(settings, tmp_path):
    env = {
        "DATABASE_URL": settings.database_url,
        "REDIS_URL": settings.redis_url,
        "CACHE_KEY_PREFIX": settings.key_prefix,
        "JWT_SECRET": settings.jwt_secret,
        "WEB_CONCURRENCY": "2",
        "WEB_THREADS": "2",
        "GUNICORN_THREADS": "2",
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prom"),
        "DATA_DIR": str(tmp_path),
    }
    # Workers boot one by one: ready once both have loaded the app and reported in.
    with web(env, tmp_path / "web.log", ready=lambda base: _workers(base) >= 2) as base:
        yield base


def _worker_pids(base: str) -> set[int]:
    """The pids of the processes listening on the web's port, main process excluded."""
    port = int(base.rsplit(":", 1)[1])
    pids = {c.pid for c in psutil.net_connections("tcp")
            if c.laddr and c.laddr.port == port and c.status == psutil.CONN_LISTEN and c.pid}
    mains = {p for p in pids if any(child.pid in pids for child in
                                    psutil.Process(p).children())}
    return pids - mains


def test_metrics_add_up_across_workers(two_workers):
    base = two_workers
    n = 60
    for _ in range(n):
        # A new connection each time: the connections are spread over both workers.
        assert requests.get(f"{base}/readyz", headers={"Connection": "close"},
                            timeout=10).status_code == 200
    for _ in range(6):  # whichever worker answers the scrape, it reports every worker's count
        body = _scrape(base)
        assert _total(body, "ops.readyz") == n
        workers = re.search(r"^web_worker_processes (\S+)$", body, re.M)
        assert workers and float(workers.group(1)) == 2  # both still live


def test_a_dead_worker_is_replaced_and_not_counted(two_workers):
    base = two_workers
    before = _worker_pids(base)
    if len(before) != 2:
        pytest.skip(f"cannot tell the workers apart here: {before}")
    os.kill(min(before), signal.SIGKILL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            now = _worker_pids(base)
            if len(now) == 2 and now != before and _workers(base) == 2:
                break
        except (requests.RequestException, psutil.Error):
            pass
        time.sleep(0.3)
    assert _worker_pids(base) != before, "the killed worker was not replaced"
    for _ in range(6):
        assert _workers(base) == 2  # the dead worker's live gauge no longer counts
