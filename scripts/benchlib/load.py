"""The load generator: ``wrk`` (Debian package) replaying pre-built requests.

``ensure_wrk`` installs it with apt-get when it is missing (saying so); ``run_wrk`` runs one
time-bounded load against a loopback URL and returns wrk's summary as a dict.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

LUA = Path(__file__).with_name("wrk") / "replay.lua"


def say(message: str) -> None:
    print(f"==> {message}", file=sys.stderr, flush=True)


def ensure_wrk() -> str:
    """Path of ``wrk``; installs the Debian package first if it is not on PATH.

    Raises ``RuntimeError`` if it cannot be installed.
    """
    found = shutil.which("wrk")
    if found:
        return found
    apt = shutil.which("apt-get")
    if not apt:
        raise RuntimeError("wrk is not installed and apt-get is not available: install wrk")
    for cmd in ([apt, "update"], [apt, "install", "-y", "--no-install-recommends", "wrk"]):
        say("wrk is missing: running " + " ".join(cmd))
        done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stdout[-2000:]}")
    found = shutil.which("wrk")
    if not found:
        raise RuntimeError("apt-get installed wrk but it is not on PATH")
    return found


@dataclass(frozen=True)
class LoadShape:
    connections: int = 16
    threads: int = 1
    timeout_s: int = 5


def run_wrk(wrk: str, base_url: str, requests_file: Path, duration_s: int, shape: LoadShape,
            mode: str = "random") -> dict:
    """Run wrk for ``duration_s`` seconds; returns its summary (latencies in microseconds)
    plus ``rps``. Raises ``RuntimeError`` when wrk fails or prints no summary."""
    if not base_url.startswith("http://127.0.0.1:"):
        raise ValueError("the benchmark loads loopback only")
    cmd = [wrk, f"-t{shape.threads}", f"-c{shape.connections}", f"-d{duration_s}s",
           f"--timeout={shape.timeout_s}s", "-s", str(LUA), base_url, "--",
           str(requests_file), mode]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=duration_s + 60,
                          check=False)
    line = next((x for x in done.stdout.splitlines() if x.startswith("WRKJSON ")), None)
    if done.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr[-1000:]}"
                           f"{done.stdout[-1000:]}")
    summary = json.loads(line.removeprefix("WRKJSON "))
    seconds = max(summary["duration_us"], 1) / 1e6
    summary["rps"] = summary["requests"] / seconds
    summary["socket_errors"] = sum(summary[k] for k in ("errors_connect", "errors_read",
                                                        "errors_write", "errors_timeout"))
    return summary


def warm_every_line(base_url: str, lines: list[tuple[str, str, str, str]], threads: int = 16,
                    budget_s: float = 120.0) -> dict:
    """Send every distinct request line once (16 at a time), so each active user's keys
    are loaded before the measured run: the table then shows the steady state a cache
    exists for, not a cold start. Bounded by ``budget_s``; returns how far it got."""
    from concurrent.futures import ThreadPoolExecutor

    import requests

    if not base_url.startswith("http://127.0.0.1:"):
        raise ValueError("the benchmark loads loopback only")
    distinct = list(dict.fromkeys(lines))
    deadline = time.monotonic() + budget_s
    session_local = threading.local()

    def send(line: tuple[str, str, str, str]) -> bool:
        if time.monotonic() > deadline:
            return False
        session = getattr(session_local, "s", None) or requests.Session()
        session_local.s = session
        method, path, token, body = line
        headers = {"Authorization": f"Bearer {token}"}
        if body:
            headers["Content-Type"] = "application/json"
        session.request(method, base_url + path, data=body or None, headers=headers,
                        timeout=30)
        return True

    with ThreadPoolExecutor(threads) as pool:
        sent = sum(pool.map(send, distinct))
    return {"lines": len(distinct), "sent": sent}
