"""The embedded servers are real, keep their data across a stop/start, and stop cleanly.

Runs in a few seconds (initdb + two Postgres starts); a SIGALRM guard fails the test
instead of hanging if a server never answers.
"""

from __future__ import annotations

import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import embedded  # scripts/embedded.py (see tests/conftest.py)
import pytest
import redis
import sqlalchemy as sa

from service.settings import Settings
from tests.support.servers import server_dir

TIME_BUDGET_S = 30


@pytest.fixture
def time_budget() -> Iterator[None]:
    """Fail (rather than hang) a test that overruns ``TIME_BUDGET_S`` by a wide margin."""

    def _overrun(signum: int, frame: object) -> None:
        raise TimeoutError(f"embedded-server test overran {2 * TIME_BUDGET_S} s")

    previous = signal.signal(signal.SIGALRM, _overrun)
    signal.alarm(2 * TIME_BUDGET_S)
    started = time.monotonic()
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert time.monotonic() - started < TIME_BUDGET_S


def _write_row(url: str) -> None:
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("CREATE TABLE kept (id int PRIMARY KEY, note text)"))
            conn.execute(sa.text("INSERT INTO kept VALUES (1, 'survives restart')"))
    finally:
        engine.dispose()


def _read_row(url: str) -> str | None:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return conn.execute(sa.text("SELECT note FROM kept WHERE id = 1")).scalar_one()
    finally:
        engine.dispose()


@pytest.fixture
def own_dir() -> Iterator[Path]:
    path = server_dir("hc-test-emb-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_servers_keep_data_across_restart(own_dir: Path, time_budget: None) -> None:
    data_dir = own_dir / "data"
    try:
        started: list[str] = []
        settings = embedded.ensure_servers(Settings(data_dir=str(data_dir)), started=started)
        assert started == ["postgres", "redis"]
        assert settings.database_url.startswith("postgresql+psycopg://postgres@/postgres?host=/")
        assert settings.redis_url == f"unix://{data_dir / 'redis' / 'redis.sock'}?db=0"

        _write_row(settings.database_url)
        r = redis.Redis.from_url(settings.redis_url)
        r.set("kept", "survives restart")
        r.rpush("rq:queue:default", "job-1")  # the queue must survive too (appendonly)
        r.close()

        # Starting again while running attaches to the same servers and starts nothing.
        again: list[str] = []
        assert embedded.ensure_servers(Settings(data_dir=str(data_dir)), started=again) == settings
        assert again == []

        assert embedded.stop_postgres(data_dir) is True
        assert embedded.stop_redis(data_dir) is True
        assert not embedded.postgres_running(data_dir)
        assert not embedded.redis_running(data_dir)
        assert embedded.stop_postgres(data_dir) is False  # idempotent
        assert embedded.stop_redis(data_dir) is False

        db_url = embedded.start_postgres(data_dir)
        redis_url = embedded.start_redis(data_dir)
        assert _read_row(db_url) == "survives restart"
        r = redis.Redis.from_url(redis_url)
        assert r.get("kept") == b"survives restart"
        assert r.lrange("rq:queue:default", 0, -1) == [b"job-1"]
        r.close()
    finally:
        embedded.stop_servers(data_dir)
    assert not embedded.postgres_running(data_dir)
    assert not embedded.redis_running(data_dir)


def test_redis_falls_back_to_loopback_port_when_socket_path_is_too_long(
    tmp_path: Path, time_budget: None
) -> None:
    data_dir = tmp_path / ("d" * 120)
    try:
        url = embedded.start_redis(data_dir)
        assert url.startswith("redis://127.0.0.1:")
        r = redis.Redis.from_url(url)
        assert r.ping()
        r.close()
        assert embedded.start_redis(data_dir) == url  # reattach reads the recorded URL
    finally:
        embedded.stop_redis(data_dir)
    assert not embedded.redis_running(data_dir)
