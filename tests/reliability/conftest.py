"""Fixtures for the reliability suite: servers a test may break, apps built on them, and a
recorder for what each fault did to latency and errors.

- ``faulty_redis``: a Redis of this test only (kill -9, restart, SIGSTOP / SIGCONT).
- ``proxy``: ``proxy(port)`` -> a ``TcpProxy`` that passes, stalls or drops traffic.
- ``pg_server`` (session): a throwaway Postgres from ``initdb``/``pg_ctl`` that tests may
  crash-restart; ``pg_database_url``: a per-test database on it (template copy).
- ``redis_cluster`` (session): three cluster masters on loopback ports.
- ``make_app``: ``make_app(settings)`` -> an app, closed at teardown.
- ``recorder``: ``recorder.phase(name)`` collects request latencies and status codes
  (``phase.wait(condition, timeout)`` waits for the traffic a phase needs); at teardown
  it prints a summary and writes ``faults.json`` under the test's tmp dir (and appends
  to ``$RELIABILITY_REPORT`` when set).
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from service import create_app
from service.settings import Settings
from tests.support.fault_servers import (
    FaultyRedis,
    PostgresProcess,
    RedisCluster3,
    TcpProxy,
    postgres_bindir,
)


@pytest.fixture
def faulty_redis(tmp_path) -> Iterator[FaultyRedis]:
    server = FaultyRedis(tmp_path).start()
    yield server
    server.stop()


@pytest.fixture
def queue_redis(tmp_path) -> Iterator[FaultyRedis]:
    """A second Redis for the RQ queues, so the cache Redis can die alone."""
    server = FaultyRedis(tmp_path).start()
    yield server
    server.stop()


@pytest.fixture
def proxy() -> Iterator[Callable[[int], TcpProxy]]:
    made: list[TcpProxy] = []

    def make(port: int) -> TcpProxy:
        made.append(TcpProxy(port))
        return made[-1]

    yield make
    for p in made:
        p.close()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresProcess]:
    bindir = postgres_bindir()
    if bindir is None:
        pytest.skip("no initdb/pg_ctl on this machine")
    server = PostgresProcess(bindir).init().start()
    from storage.migrate import upgrade

    admin = create_engine(server.url, isolation_level="AUTOCOMMIT", pool_size=1,
                          max_overflow=0)
    with admin.connect() as conn:
        conn.execute(text('CREATE DATABASE "tpl"'))
    admin.dispose()
    upgrade(make_url(server.url).set(database="tpl").render_as_string(hide_password=False))
    yield server
    server.stop()


@pytest.fixture
def pg_database_url(pg_server) -> str:
    name = f"r_{uuid.uuid4().hex[:12]}"
    admin = create_engine(pg_server.url, isolation_level="AUTOCOMMIT", pool_size=1,
                          max_overflow=0, pool_pre_ping=True)
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "tpl"'))
    admin.dispose()
    return make_url(pg_server.url).set(database=name).render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory) -> Iterator[RedisCluster3]:
    cluster = RedisCluster3(tmp_path_factory.mktemp("cluster"))
    try:
        cluster.start()
    except (OSError, RuntimeError) as exc:
        cluster.stop()
        pytest.skip(f"cannot start a Redis Cluster: {exc}")
    yield cluster
    cluster.stop()


class CheckingClient(FlaskClient):
    """A test client that notes every response breaking the error rules: a 500, a 503
    without ``Retry-After``, a non-JSON error body."""

    violations: list[str]

    def open(self, *args, **kwargs):  # type: ignore[override]
        response = super().open(*args, **kwargs)
        code = response.status_code
        where = f"{response.request.method} {response.request.path}"
        if code >= 500 and code != 503:
            self.violations.append(f"{code} on {where}: {response.get_data(as_text=True)[:200]}")
        if code == 503 and "Retry-After" not in response.headers:
            self.violations.append(f"503 without Retry-After on {where}")
        if code >= 400 and not response.is_json:
            self.violations.append(f"non-JSON {code} on {where}")
        return response


@pytest.fixture
def make_app() -> Iterator[Callable[..., Flask]]:
    """``make_app(settings)`` -> an app whose test client is a ``CheckingClient``; every
    app's violations are asserted empty at teardown."""
    apps: list[Flask] = []

    def make(settings: Settings) -> Flask:
        app = create_app({"SETTINGS": settings, "TESTING": True})
        violations: list[str] = []
        app.test_client_class = type("Client", (CheckingClient,), {"violations": violations})
        app.extensions["test.violations"] = violations
        apps.append(app)
        return app

    yield make
    found = [v for app in apps for v in app.extensions["test.violations"]]
    for app in apps:
        app.extensions["hc"].close()
    assert not found, found[:10]


class Phase:
    """Latencies (ms) and outcomes of the requests made during one phase of a fault."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.latencies: list[float] = []
        self.statuses: Counter[str] = Counter()
        self.notes: dict[str, object] = {}
        self._lock = threading.Condition()

    def add(self, ms: float, status: int | str) -> None:
        with self._lock:
            self.latencies.append(ms)
            self.statuses[str(status)] += 1
            self._lock.notify_all()

    @property
    def requests(self) -> int:
        return len(self.latencies)

    def wait(self, condition: Callable[[], bool], timeout: float) -> bool:
        """Block until ``condition()`` holds, checked at every request recorded here and at
        least every 50 ms, for at most ``timeout`` seconds; returns whether it held."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while not condition():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._lock.wait(min(left, 0.05))
            return True

    def summary(self) -> dict[str, object]:
        lat = sorted(self.latencies)

        def pct(p: float) -> float:
            return round(lat[min(len(lat) - 1, int(p * len(lat)))], 1) if lat else 0.0

        return {
            "phase": self.name,
            "requests": len(lat),
            "status": dict(sorted(self.statuses.items())),
            "p50_ms": pct(0.5),
            "p99_ms": pct(0.99),
            "max_ms": round(lat[-1], 1) if lat else 0.0,
            **self.notes,
        }


class Recorder:
    def __init__(self, test: str) -> None:
        self.test = test
        self.phases: list[Phase] = []
        self.current = Phase("setup")

    @contextmanager
    def phase(self, name: str) -> Iterator[Phase]:
        """Requests recorded through ``current`` while the block runs land in this phase."""
        phase = Phase(name)
        self.phases.append(phase)
        self.current = phase
        yield phase

    def report(self) -> list[dict[str, object]]:
        return [p.summary() for p in self.phases]


@pytest.fixture
def recorder(request, tmp_path) -> Iterator[Recorder]:
    rec = Recorder(request.node.name)
    yield rec
    if not rec.phases:
        return
    rows = rec.report()
    (tmp_path / "faults.json").write_text(json.dumps({"test": rec.test, "phases": rows},
                                                     indent=2))
    print(f"\n[fault report] {rec.test}")
    for row in rows:
        print("   ", json.dumps(row))
    target = os.environ.get("RELIABILITY_REPORT")
    if target:
        with Path(target).open("a") as fh:
            fh.write(json.dumps({"test": rec.test, "phases": rows}) + "\n")
