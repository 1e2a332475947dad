"""``cache.client.pipelined``: the same replies as a redis-py pipeline, and an error reply
neither loses the replies after it nor leaves the pooled connection out of step."""

from __future__ import annotations

import pytest
from redis.exceptions import ResponseError

from cache.client import connect, pipelined


def test_replies_match_a_pipeline_and_errors_keep_the_connection_in_step(redis_url,
                                                                        key_prefix):
    r = connect(redis_url, 5.0, 5.0)
    h, s, z = (f"{key_prefix}pl:{name}" for name in ("h", "s", "z"))
    r.hset(h, mapping={"a": "1", "b": "2"})
    r.set(s, b"bytes")
    r.zadd(z, {"x": 1, "y": 2})
    commands = [("HGETALL", h), ("GET", s), ("GET", f"{key_prefix}pl:none"),
                ("ZREVRANGE", z, 0, -1, "WITHSCORES"), ("ZCARD", z), ("EXPIRE", s, 60)]
    pipe = r.pipeline(transaction=False)
    for command in commands:
        pipe.execute_command(*command)
    assert pipelined(r, commands) == pipe.execute()
    assert pipelined(r, [("HGETALL", h)]) == [{b"a": b"1", b"b": b"2"}]

    # An error reply in the middle: raised, after every reply was read.
    with pytest.raises(ResponseError):
        pipelined(r, [("GET", s), ("HGETALL", s), ("GET", s)])
    # The pool's connection answers the next call in step (no reply left unread).
    for _ in range(3):
        assert pipelined(r, [("GET", s), ("ZCARD", z)]) == [b"bytes", 2]
    r.delete(h, s, z)
    r.close()
