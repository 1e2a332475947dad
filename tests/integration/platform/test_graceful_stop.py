"""Graceful stop of the web (issue 6): started as the Procfile's ``web`` line starts it
(web.py), a request in flight when the main process gets SIGTERM still completes (30 s
grace), and the process then exits 0. The app is a few-line slow WSGI app: what is tested
is the server and its config."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

from tests.support import ROOT as PROJECT_ROOT
from tests.support.servers import free_port, procfile_web

ROOT = PROJECT_ROOT
SLOW_APP = '''
import os, pathlib, time
def app(environ, start_response):
    if environ["PATH_INFO"] == "/slow":
        pathlib.Path(os.environ["SLOW_MARK"]).touch()
        time.sleep(2.0)
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"finished"]

def create():
    return app
'''


def test_sigterm_lets_an_in_flight_request_finish(tmp_path):
    (tmp_path / "slow_app.py").write_text(SLOW_APP)
    port = free_port()
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    env = {**os.environ, "PORT": str(port), "WEB_CONCURRENCY": "1", "WEB_THREADS": "2",
           "GUNICORN_THREADS": "2", "PATH": path,
           "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prom"), "DATA_DIR": str(tmp_path),
           "PYTHONPATH": str(tmp_path), "SLOW_MARK": str(tmp_path / "slow-started"),
           # web.py refuses to start without them; the slow app uses neither.
           "DATABASE_URL": "postgresql+psycopg://unused@127.0.0.1:1/unused",
           "REDIS_URL": "redis://127.0.0.1:1/0", "JWT_SECRET": "s" * 32}
    env.pop("BIND", None)
    log = tmp_path / "web.log"
    with log.open("wb") as err:
        proc = subprocess.Popen(
            ["/bin/sh", "-c", f"{procfile_web()} slow_app:create"],
            cwd=ROOT, env=env, stdout=err, stderr=err, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{base}/", timeout=1).status_code == 200:
                    break
            except requests.ConnectionError:
                time.sleep(0.1)
        else:
            pytest.fail("the web process did not start: " + log.read_text()[-2000:])
        result: dict[str, object] = {}

        def slow() -> None:
            response = requests.get(f"{base}/slow", timeout=10)
            result["status"], result["body"] = response.status_code, response.text

        thread = threading.Thread(target=slow)
        thread.start()
        started = tmp_path / "slow-started"
        deadline = time.monotonic() + 10
        while not started.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert started.exists(), "the slow request never reached the app"
        time.sleep(0.1)  # the request is in flight: 1.9 s of it remain
        proc.send_signal(signal.SIGTERM)
        thread.join(timeout=10)
        assert result == {"status": 200, "body": "finished"}
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
