"""The cache's Lua scripts and the one way to run them.

Every script is a ``LuaScript`` created at import time; creating one registers it, so when
Redis loses its script cache (restart, ``SCRIPT FLUSH``) ``load_all`` reloads every script
the process knows. Scripts are called by SHA, without redis-py's ``SCRIPT EXISTS`` round
trip before every pipeline that holds one. On a cluster a script runs as ``EVAL`` with its
source (routed by its keys; redis-py refuses EVALSHA in cluster pipelines), so no node
needs it loaded.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from redis.cluster import ClusterPipeline, RedisCluster
from redis.exceptions import NoScriptError

_REGISTERED: list[LuaScript] = []


class LuaScript:
    """One script. ``script(keys, args, client)`` queues it on a pipeline or runs it on a
    client; a direct call that finds the script cache empty loads it and retries once
    (pipelines fail as a whole with NOSCRIPT; ``Cache.run`` retries those)."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()
        _REGISTERED.append(self)

    def __call__(self, keys: Sequence[str] = (), args: Sequence[Any] = (), client: Any = None
                 ) -> Any:
        keys = list(keys)
        if isinstance(client, RedisCluster | ClusterPipeline):
            return client.execute_command("EVAL", self.source, len(keys), *keys, *args)
        try:
            return client.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            client.script_load(self.source)
            return client.evalsha(self.sha, len(keys), *keys, *args)


def load_all(client: Any) -> None:
    """Load every registered script into ``client``'s script cache."""
    for script in _REGISTERED:
        client.script_load(script.source)


# Read helpers a pipeline needs to be atomic on one key without MULTI (a pipeline spanning
# slots cannot hold a MULTI).

# BITFIELD_RO of KEYS[1] with ARGV as its GET arguments, or nil if the key is missing (a
# missing key would read as zeros: "nothing viewed", a wrong answer).
BITFIELD_IF_EXISTS = LuaScript("""
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
return redis.call('BITFIELD_RO', KEYS[1], unpack(ARGV))
""")
