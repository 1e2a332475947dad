"""The throwaway servers of tests/support/servers.py: a test gets a Redis of its own even
when its port was taken first (parallel workers pick free ports at the same time)."""

from __future__ import annotations

import redis

from tests.support.servers import RedisProcess


def test_a_redis_whose_port_is_taken_starts_on_another(tmp_path):
    (tmp_path / "a").mkdir()
    first = RedisProcess(tmp_path / "a").start()
    (tmp_path / "b").mkdir()
    second = RedisProcess(tmp_path / "b")
    second.port = first.port  # what a race between free_port() and redis-server leads to
    try:
        second.start()
        assert second.port != first.port
        for server in (first, second):
            info = redis.Redis(port=server.port, socket_timeout=2).info("server")
            assert int(info["process_id"]) == server.proc.pid
        second.stop()
        second.start()  # a restart keeps its (new) port
        assert redis.Redis(port=second.port, socket_timeout=2).ping()
    finally:
        second.stop()
        first.stop()
