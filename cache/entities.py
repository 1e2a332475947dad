"""The entity cache (DESIGN rule 7): each entity on a page, rendered once, shared by every
viewer.

An entity is one small hash under its own key, in the slot of what owns it (the path's
module names the key and the scope; see ``cache/group_feed.py`` and
``cache/recent_reels.py``):

- ``j``: the entity's rendered JSON bytes, as the path's response embeds them (a path may
  store a fragment, e.g. an object without its closing brace, to append per-viewer fields);
- counters that move fast (likes, views) as their own decimal fields, set in place by the
  write's change (``HSET`` of the absolute value the write read in its transaction), so a
  view never re-renders the entity.

Reads: ``queue_read`` queues one ``HGETALL`` per entity on the caller's pipeline (the
page's other reads ride with it); on a cluster the pipeline is one round trip per node, in
parallel. A hot path can send its reads as one ``batch`` instead (raw commands, raw
replies: a tenth of redis-py's pipeline cost per command; see ``cache/posts.py``).
``EntityStore.complete`` fills whatever was missing (never cached, expired,
evicted) with ONE batched load from Postgres through ``Filler.fill_batch``: leases and
version copies in one round trip, the load, one publishing round trip; each key is
published only if its scope's version did not move while it loaded, so a slow fill never
overwrites a newer write. A missing entity is never an error and never a stale page.

Writes: an entity changes only through the same outbox ``Change`` as the write (its scope
bumped in the write's transaction): ``HSET`` of a counter, ``DEL`` on delete. A change
runs its ops only on keys that exist (``cache/versioned.py``), so a new entity is cached by
the first read that misses it. Every entity has a TTL (``Cache.idle_ttl``) and Redis may
evict it at any time (LRU): both end in one batched fill.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from redis.cluster import ClusterPipeline

from cache import stats
from cache.client import NO_VALUE, CacheUnavailable, packed_client, pipelined
from cache.fill import Filler
from cache.keys import Scope
from cache.scripts import LuaScript

JSON = b"j"  # the field holding the rendered JSON

Fields = dict[bytes, bytes]


@dataclass(frozen=True)
class Entity:
    """Where one entity lives: its id, the scope whose version guards it, its key."""

    id: int
    scope: Scope
    key: str


def encode(fields: Mapping[str, Any]) -> Fields:
    """Hash fields as Redis returns them (bytes), from rendered values."""
    return {
        name.encode(): value if isinstance(value, bytes) else str(value).encode()
        for name, value in fields.items()
    }


def script_command(r: Any, script: LuaScript, keys: Sequence[str], args: Sequence[Any]
                   ) -> tuple[Any, ...]:
    """``script`` as one command of a ``batch`` on ``r``: ``EVALSHA`` on a plain client
    (a script cache Redis lost answers NOSCRIPT, and ``Cache.run`` loads the scripts and
    runs the batch again), ``EVAL`` of its source on a cluster (as ``LuaScript`` does)."""
    if packed_client(r):
        return ("EVALSHA", script.sha, len(keys), *keys, *args)
    return ("EVAL", script.source, len(keys), *keys, *args)


def batch(r: Any, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
    """``commands`` in one round trip (per node), their raw replies in order (``HMGET`` and
    ``SMISMEMBER`` lists, integers, bulk bytes): ``cache.client.pipelined(raw=True)``.
    A page of entities is dozens of small commands, and redis-py's pipeline spent about
    10 µs of Python on each (three quarters of a warm community page's Redis cost, by
    profile). Raises what redis-py raises (``Cache.run`` turns it into
    ``CacheUnavailable``)."""
    return pipelined(r, commands, raw=True)


def run_script(r: Any, script: LuaScript, keys: Sequence[str], args: Sequence[Any]) -> Any:
    """One call of ``script`` on ``r`` (not a pipeline), its raw reply: a ``batch`` of one
    on a plain client (redis-py's ``evalsha`` packs its arguments in Python and books
    each call through its observability hooks), ``script(...)`` itself on any other."""
    if packed_client(r):
        return batch(r, [script_command(r, script, keys, args)])[0]
    return script(keys=keys, args=args, client=r)


def queue_read(pipe: Any, entities: Sequence[Entity]) -> None:
    """Queue one HGETALL per entity (an empty answer: not cached)."""
    for entity in entities:
        pipe.hgetall(entity.key)


# KEYS: entity keys. ARGV: their fields. Returns one HMGET answer per key (all false for
# a missing entity). Only for a single Redis (the keys' slots differ): there one script
# call is one reply to parse instead of one per entity.
READ_FIELDS = LuaScript("""
local out = {}
for i, key in ipairs(KEYS) do out[i] = redis.call('HMGET', key, unpack(ARGV)) end
return out
""")


def read_fields_commands(r: Any, keys: Sequence[str], fields: Sequence[bytes]
                         ) -> list[tuple[Any, ...]]:
    """The commands of a ``batch`` on ``r`` reading ``fields`` of each entity key (their
    replies: ``split_fields``): one ``READ_FIELDS`` call on a plain client (one reply to
    parse for the page: redis-py reads each reply through several Python calls),
    one ``HGETALL`` per key on a cluster (the keys' slots differ; an ``HMGET`` made
    redis-py's cluster pipeline ask a node for each command's keys first)."""
    if not keys:
        return []
    if packed_client(r):
        return [script_command(r, READ_FIELDS, keys, fields)]
    return [("HGETALL", key) for key in keys]


def split_fields(r: Any, replies: Sequence[Any], count: int, fields: Sequence[bytes]
                 ) -> tuple[list[Sequence[Any]], Sequence[Any]]:
    """The replies of ``read_fields_commands(r, keys, fields)`` for ``count`` keys, at the
    head of ``replies``: each key's values of ``fields`` in order (all None for an entity
    not cached), and the replies after them."""
    if not count:
        return [], replies
    if packed_client(r):
        return list(replies[0]), replies[1:]
    # Not packed: redis-py's pipeline parsed each HGETALL into a dict.
    return ([[found.get(name) for name in fields] for found in replies[:count]],
            replies[count:])


def queue_read_fields(pipe: Any, entities: Sequence[Entity], fields: Sequence[bytes]
                      ) -> Callable[[Sequence[Any]], list[Fields]]:
    """Queue the read of the entities' ``fields`` on a redis-py pipeline: one
    ``READ_FIELDS`` call on a single Redis (redis-py packs, parses and books each command
    of a pipeline in Python: one command for a page, not one per entity), an ``HGETALL``
    per entity on a cluster. Returns how to turn the replies queued here into each
    entity's fields (those of ``fields`` it has; ``{}``: not cached), as ``queue_read``'s
    answers are."""
    if isinstance(pipe, ClusterPipeline):
        queue_read(pipe, entities)
        return lambda replies: [dict(found) for found in replies]
    READ_FIELDS([e.key for e in entities], fields, client=pipe)
    return lambda replies: [{f: v for f, v in zip(fields, values, strict=True) if v is not None}
                            for values in replies[0]]


def _poll(r: Any, keys: list[str]) -> list[Any]:
    pipe = r.pipeline(transaction=False)
    for key in keys:
        pipe.hgetall(key)
    return [found or NO_VALUE for found in pipe.execute()]


def _stage(pipe: Any, temp: str, fields: Fields) -> None:
    pipe.hset(temp, mapping=fields)


class EntityStore:
    """The entities of one read path (``path`` labels its counters)."""

    def __init__(self, filler: Filler, path: str) -> None:
        self.filler = filler
        self.path = path

    def complete(
        self,
        entities: Sequence[Entity],
        found: Sequence[Fields],
        load: Callable[[list[int]], Mapping[int, Mapping[str, Any]]],
    ) -> dict[int, Fields]:
        """``{id: fields}`` for each entity that exists: ``found`` (the HGETALL answers of
        ``queue_read``, in order) completed by one batched fill of the missing ones from
        ``load(ids)`` (``{id: rendered fields}``; an id it leaves out no longer exists).
        With Redis failing during the fill, the missing ones come from ``load`` alone."""
        out = {e.id: f for e, f in zip(entities, found, strict=True) if f}
        missing = [e for e, f in zip(entities, found, strict=True) if not f]
        if not missing:
            stats.count(self.path, "hit")
            return out
        stats.count(self.path, "miss")

        def load_indexed(indices: list[int]) -> dict[int, Fields]:
            rows = load([missing[i].id for i in indices])
            return {i: encode(rows[missing[i].id]) for i in indices if missing[i].id in rows}

        try:
            filled = self.filler.fill_batch(
                self.path, [(e.scope, e.key) for e in missing], load_indexed, _stage, _poll
            )
        except CacheUnavailable:
            stats.count(self.path, "fallback")
            filled = load_indexed(list(range(len(missing))))
        out.update((missing[i].id, fields) for i, fields in filled.items())
        return out

    def read(
        self,
        entities: Sequence[Entity],
        load: Callable[[list[int]], Mapping[int, Mapping[str, Any]]],
    ) -> dict[int, Fields]:
        """The entities alone: one pipeline (one round trip per node), then ``complete``;
        Redis down: all from ``load``."""
        if not entities:
            return {}
        cache = self.filler.cache

        def run(r: Any) -> list[Any]:
            pipe = r.pipeline(transaction=False)
            queue_read(pipe, entities)
            return pipe.execute()

        try:
            found = cache.run(self.path, run)
        except CacheUnavailable:
            stats.count(self.path, "fallback")
            return {i: encode(f) for i, f in load([e.id for e in entities]).items()}
        return self.complete(entities, found, load)
