"""The service under gunicorn as the Procfile runs it: metrics add up across workers."""

from __future__ import annotations

import re

import pytest
import requests

from tests.servers import gunicorn


def _total(body: str, endpoint: str) -> float:
    labels = f'endpoint="{re.escape(endpoint)}",method="GET",status="200"'
    pattern = rf"http_requests_total\{{{labels}\}} (\S+)"
    return sum(float(v) for v in re.findall(pattern, body))


def _workers(base: str) -> float:
    body = requests.get(f"{base}/metrics", headers={"Connection": "close"}, timeout=10).text
    found = re.search(r"^web_worker_processes (\S+)$", body, re.M)
    return float(found.group(1)) if found else 0.0


@pytest.fixture
def two_workers(settings, tmp_path):
    env = {
        "DATABASE_URL": settings.database_url,
        "REDIS_URL": settings.redis_url,
        "CACHE_KEY_PREFIX": settings.key_prefix,
        "JWT_SECRET": settings.jwt_secret,
        "WEB_CONCURRENCY": "2",
        "GUNICORN_THREADS": "2",
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prom"),
        "DATA_DIR": str(tmp_path),
    }
    # Workers boot one by one: ready once both have loaded the app and reported in.
    with gunicorn(env, tmp_path / "gunicorn.log", ready=lambda base: _workers(base) >= 2) as base:
        yield base


def test_metrics_add_up_across_workers(two_workers):
    base = two_workers
    n = 60
    for _ in range(n):
        # A new connection each time: the master hands connections to either worker.
        assert requests.get(f"{base}/readyz", headers={"Connection": "close"},
                            timeout=10).status_code == 200
    for _ in range(6):  # whichever worker answers the scrape, it reports every worker's count
        body = requests.get(f"{base}/metrics", headers={"Connection": "close"},
                            timeout=10).text
        assert _total(body, "ops.readyz") == n
        workers = re.search(r"^web_worker_processes (\S+)$", body, re.M)
        assert workers and float(workers.group(1)) == 2  # both still live
