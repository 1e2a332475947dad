"""``cache.client.connect``'s client (``LeanRedis`` on a ``LeanPool``): redis-py's replies
and error handling without its per-command extras. What the extras' safety net (a poll
for unread data at each checkout) guarded against must still hold: no caller ever reads
another command's reply, a dropped connection is replaced, and the pool keeps no more
connections than callers ran at once."""

from __future__ import annotations

import time

import pytest
import redis
from redis.exceptions import ResponseError, TimeoutError

from cache.client import LeanPool, LeanRedis, connect, pipelined
from tests.support.concurrency import errors_in_threads


def test_commands_answer_as_redis_py_does(redis_url, key_prefix):
    lean = connect(redis_url, 5.0, 5.0)
    plain = redis.Redis.from_url(redis_url)
    assert type(lean) is LeanRedis and type(lean.connection_pool) is LeanPool
    h, z, s = (f"{key_prefix}lean:{name}" for name in ("h", "z", "s"))
    plain.hset(h, mapping={"a": "1"})
    plain.zadd(z, {"x": 1.5, "y": 2})
    plain.sadd(s, "7", "9")
    for r in (lean, plain):  # the same parsed replies (response callbacks, options)
        assert r.hgetall(h) == {b"a": b"1"}
        assert r.zrange(z, 0, -1, withscores=True) == [(b"x", 1.5), (b"y", 2.0)]
        assert r.smembers(s) == {b"7", b"9"}
        assert r.mget([s, f"{key_prefix}lean:none"]) == [None, None]
        assert r.exists(h, z, f"{key_prefix}lean:none") == 2
    assert lean.set(f"{key_prefix}lean:n", 1, nx=True) is True
    assert lean.set(f"{key_prefix}lean:n", 1, nx=True) is None
    plain.delete(h, z, s, f"{key_prefix}lean:n")
    lean.close()
    plain.close()


def test_an_error_reply_keeps_the_connection_in_step(redis_url, key_prefix):
    r = connect(redis_url, 5.0, 5.0)
    s = f"{key_prefix}lean:s"
    r.set(s, "text")
    with pytest.raises(ResponseError):
        r.incr(s)
    for _ in range(3):
        assert r.get(s) == b"text"
        assert pipelined(r, [("GET", s), ("STRLEN", s)]) == [b"text", 4]
    r.delete(s)
    r.close()


def test_a_timed_out_reply_is_never_read_by_the_next_command(redis_url, key_prefix):
    """A read that times out leaves Redis's late reply on the socket: the connection is
    dropped, so the next command (on a fresh connection) reads its own reply."""
    r = connect(redis_url, read_timeout=0.1)
    s, empty = f"{key_prefix}lean:s", f"{key_prefix}lean:empty"
    r.set(s, "mine")
    with pytest.raises(TimeoutError):
        r.blpop([empty], timeout=1)  # Redis answers nil after 1 s; we wait 0.1 s
    time.sleep(1.2)  # the nil reply has arrived on the timed-out socket by now
    assert r.get(s) == b"mine"
    with pytest.raises(TimeoutError):
        pipelined(r, [("BLPOP", empty, 1)])
    time.sleep(1.2)
    assert pipelined(r, [("GET", s)]) == [b"mine"]
    assert r.get(s) == b"mine"
    r.delete(s)
    r.close()


def test_a_killed_connection_is_replaced(redis_url, key_prefix):
    r = connect(redis_url, 5.0, 5.0)
    s = f"{key_prefix}lean:s"
    r.set(s, "v")
    name = f"{key_prefix}lean-victim"
    r.client_setname(name)  # on the pool's one idle connection
    admin = redis.Redis.from_url(redis_url)
    assert admin.client_kill_filter(_type="normal", skipme=True, laddr=None,
                                    **_by_name(admin, name)) >= 1
    assert r.get(s) == b"v"  # retried on a new connection
    assert pipelined(r, [("GET", s)]) == [b"v"]
    r.delete(s)
    admin.close()
    r.close()


def _by_name(admin: redis.Redis, name: str) -> dict:
    ids = [c["id"] for c in admin.client_list() if c.get("name") == name]
    assert ids, "the named connection is listed"
    return {"_id": ids[0]}


def test_the_pool_holds_no_more_connections_than_ran_at_once(redis_url, key_prefix):
    r = connect(redis_url, 5.0, 5.0)
    s = f"{key_prefix}lean:s"
    r.set(s, "v")
    def work() -> None:
        for _ in range(200):
            assert r.get(s) == b"v"
            assert pipelined(r, [("GET", s), ("EXISTS", s)]) == [b"v", 1]

    assert errors_in_threads(work, 4) == []
    pool = r.connection_pool
    assert not pool._in_use_connections  # every checkout was released
    assert 1 <= len(pool._available_connections) <= 4
    r.delete(s)
    r.close()
