"""The service under gunicorn as the Procfile runs it: metrics add up across workers."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from tests.servers import free_port

ROOT = Path(__file__).resolve().parents[1]


def _total(body: str, endpoint: str) -> float:
    labels = f'endpoint="{re.escape(endpoint)}",method="GET",status="200"'
    pattern = rf"http_requests_total\{{{labels}\}} (\S+)"
    return sum(float(v) for v in re.findall(pattern, body))


def _workers(base: str) -> float:
    body = requests.get(f"{base}/metrics", headers={"Connection": "close"}, timeout=10).text
    found = re.search(r"^web_worker_processes (\S+)$", body, re.M)
    return float(found.group(1)) if found else 0.0


@pytest.fixture
def gunicorn(settings, tmp_path):
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": settings.database_url,
        "REDIS_URL": settings.redis_url,
        "CACHE_KEY_PREFIX": settings.key_prefix,
        "JWT_SECRET": settings.jwt_secret,
        "PORT": str(port),
        "WEB_CONCURRENCY": "2",
        "GUNICORN_THREADS": "2",
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prom"),
        "DATA_DIR": str(tmp_path),
    }
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("gunicorn")), "-c", "gunicorn.conf.py",
         "service:create_app()"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{base}/healthz", timeout=5).status_code == 200:
                    break
            except requests.RequestException:  # not listening yet, or still booting
                time.sleep(0.2)
        else:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            pytest.fail("gunicorn did not start: " + proc.stderr.read().decode()[-2000:])
        # Workers boot one by one: wait until both have loaded the app and reported in.
        while _workers(base) < 2:
            assert time.monotonic() < deadline, "the second gunicorn worker did not boot"
            time.sleep(0.2)
        yield base
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(30)
        proc.stderr.close()


def test_metrics_add_up_across_workers(gunicorn):
    n = 60
    for _ in range(n):
        # A new connection each time: the master hands connections to either worker.
        assert requests.get(f"{gunicorn}/readyz", headers={"Connection": "close"},
                            timeout=10).status_code == 200
    for _ in range(6):  # whichever worker answers the scrape, it reports every worker's count
        body = requests.get(f"{gunicorn}/metrics", headers={"Connection": "close"},
                            timeout=10).text
        assert _total(body, "ops.readyz") == n
        workers = re.search(r"^web_worker_processes (\S+)$", body, re.M)
        assert workers and float(workers.group(1)) == 2  # both still live
