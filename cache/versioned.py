"""Versioned writes and fills: the rules that keep Redis equal to Postgres.

Every piece of cached state belongs to a ``Scope`` whose version's truth is a Postgres row
(``storage.cache_state``). A write bumps that row inside its transaction and, after commit,
applies a ``Change`` to Redis with ``APPLY``:

- the Redis copy of the version is at ``v - 1``: the change's idempotent ops run on the
  keys that exist (a missing key is left missing: a fill will build it whole), and the
  copy becomes ``v``;
- the copy is ``>= v``: the change is already in (a replay from the outbox): nothing;
- the copy is missing or further behind (a change was lost, e.g. a crash between commit
  and apply): the scope's keys are deleted and the copy set to ``v``; the next read
  rebuilds them from Postgres.

So keys present under copy ``c`` reflect every change up to ``c``; never a partial state.
Ops must be idempotent (SETBIT, ZADD with absolute scores, HSET of absolute values...),
because a fill may already contain a committed change whose apply comes after it.

A fill reads the version copy *before* loading from Postgres, stages its result in
temporary keys and ``PUBLISH`` renames them into place only if the copy is unchanged, so
a slow filler can never overwrite newer state.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from cache.keys import Keyspace, Scope
from cache.scripts import LuaScript

# Commands a Change may carry: all idempotent when given absolute values.
ALLOWED_OPS = frozenset(
    {"SETBIT", "ZADD", "ZREM", "ZREMRANGEBYRANK", "ZREMRANGEBYSCORE", "HSET", "HDEL", "SET",
     "DEL", "SADD", "SREM", "EXPIRE"}
)

APPLY_LUA = """
local v = tonumber(ARGV[1])
local cur = tonumber(redis.call('GET', KEYS[1]) or '-1')
if cur >= v then return 0 end
redis.call('SET', KEYS[1], v, 'EX', tonumber(ARGV[2]))
if cur ~= v - 1 then
  for i = 2, #KEYS do redis.call('DEL', KEYS[i]) end
  return 1
end
local ops = cjson.decode(ARGV[3])
for _, op in ipairs(ops) do
  local key = KEYS[op[2] + 2]
  if redis.call('EXISTS', key) == 1 then
    redis.call(op[1], key, unpack(op, 3))
  end
end
return 2
"""

# APPLY's answers: the change was in already (the copy is at or past it), the scope's keys
# were dropped (the copy was further behind), the ops ran.
APPLY_ALREADY_IN, APPLY_DROPPED, APPLY_RAN = 0, 1, 2

# KEYS: version, lease, then (key, temp) pairs. ARGV: expected version, ttl, lease token,
# and optionally the data keys' TTL (default: ttl).
PUBLISH_LUA = """
local ok = 0
if redis.call('GET', KEYS[1]) == ARGV[1] then
  ok = 1
  redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2]))
  local key_ttl = tonumber(ARGV[4] or ARGV[2])
  for i = 3, #KEYS, 2 do
    if redis.call('EXISTS', KEYS[i + 1]) == 1 then
      redis.call('RENAME', KEYS[i + 1], KEYS[i])
      redis.call('EXPIRE', KEYS[i], key_ttl)
    else
      redis.call('DEL', KEYS[i])
    end
  end
else
  for i = 3, #KEYS, 2 do redis.call('DEL', KEYS[i + 1]) end
end
if redis.call('GET', KEYS[2]) == ARGV[3] then redis.call('DEL', KEYS[2]) end
return ok
"""

# Raise the version copy to ARGV[1] unless it is already higher (never roll back).
SET_MAX_LUA = """
local cur = tonumber(redis.call('GET', KEYS[1]) or '-1')
local v = tonumber(ARGV[1])
if cur < v then redis.call('SET', KEYS[1], v, 'EX', tonumber(ARGV[2])) return v end
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2]))
return cur
"""


@dataclass
class Change:
    """One committed change to one scope, as stored in the outbox and applied to Redis.

    ``keys`` are the scope's data keys (full names); each op is ``[CMD, key_index, *args]``.
    """

    scope: Scope
    version: int
    keys: list[str]
    ops: list[list[Any]] = field(default_factory=list)

    def op(self, command: str, key: str, *args: Any) -> Change:
        command = command.upper()
        if command not in ALLOWED_OPS:
            raise ValueError(f"{command} is not an idempotent cache op")
        if key not in self.keys:
            self.keys.append(key)
        self.ops.append([command, self.keys.index(key), *args])
        return self

    def to_json(self) -> dict[str, Any]:
        return {
            "tag": self.scope.tag,
            "name": self.scope.name,
            "version": self.version,
            "keys": self.keys,
            "ops": self.ops,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Change:
        return cls(Scope(data["tag"], data["name"]), int(data["version"]), list(data["keys"]),
                   list(data["ops"]))


APPLY = LuaScript(APPLY_LUA)
PUBLISH = LuaScript(PUBLISH_LUA)
SET_MAX = LuaScript(SET_MAX_LUA)


def queue_apply(pipe: Any, keys: Keyspace, change: Change, ttl: int) -> None:
    """Queue ``change`` on a pipeline (one EVALSHA)."""
    APPLY(
        keys=[keys.version(change.scope), *change.keys],
        args=[change.version, ttl, json.dumps(change.ops)],
        client=pipe,
    )


def publish_keys(keys: Keyspace, scope: Scope, lease: str, pairs: Sequence[tuple[str, str]]
                 ) -> list[str]:
    flat = [keys.version(scope), lease]
    for key, temp in pairs:
        flat += [key, temp]
    return flat
