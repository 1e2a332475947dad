"""What every read path's ``check`` / ``rebuild`` / ``warm`` is built on.

Each ``cache/<path>.py`` owns the operator's view of its keys:

- ``check(deps, user_id)`` is read-only and returns the differences between what Redis
  holds and what Postgres says; nothing cached is no difference. A key is compared only
  when its version is *settled*: the Redis copy (read first) equals the Postgres row read
  before *and* after loading the truth, so no write committed meanwhile and none is waiting
  for its apply. A difference is therefore a real one, never a write in flight, and a
  healthy system reports none, even under traffic.
- ``rebuild(deps, user_id)`` refills every key of the path through its version-checked
  fill (a fill computed under an outdated version is dropped), cached or not.
- ``warm(deps, user_id)`` runs the path's read-through reads, so a miss is filled and the
  user's next read is a hit.

``deps`` is anything with ``cache``, ``filler``, ``db`` and ``settings`` (the service's
``AppState``). Peeks read cached values in one pipelined round trip, for the path's own
parsers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from cache.client import Cache
from cache.fill import Filler
from cache.keys import Scope
from storage import rebuild as store
from storage.db import Database

PATH = "rebuild"
MAX_DETAIL = 200


class Deps(Protocol):
    cache: Cache
    filler: Filler
    db: Database
    settings: Any


@dataclass(frozen=True)
class Difference:
    """One cached key that does not say what Postgres says."""

    path: str
    key: str
    detail: str
    user_id: int | None = None
    group_id: int | None = None

    def __str__(self) -> str:
        who = f"user {self.user_id}" if self.user_id is not None else f"group {self.group_id}"
        return f"{self.path} {who} {self.key}: {self.detail}"


def sql(deps: Deps, fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(session, *args)`` in a session of its own."""
    with deps.db.read() as session:
        return fn(session, *args)


def versions(deps: Deps, scopes: Sequence[Scope]) -> dict[str, int]:
    """The scopes' version rows in Postgres (one query)."""
    return sql(deps, store.versions, [s.row_name for s in scopes])


def settled(copy: int | None, before: dict[str, int], after: dict[str, int],
            scope: Scope) -> bool:
    """No write moved the scope while we loaded, and none waits for its apply."""
    row = scope.row_name
    return before[row] == after[row] and (copy is None or copy == before[row])


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= MAX_DETAIL else text[:MAX_DETAIL] + "..."


def differs(path: str, key: str, cached: Any, truth: Any, **who: Any) -> list[Difference]:
    """``[]`` if ``cached == truth``, else the one difference."""
    if cached == truth:
        return []
    return [Difference(path, key, f"cached {_short(cached)} != Postgres {_short(truth)}",
                       **who)]


# What a peek can read of a key: the command that returns it whole.
READERS = {
    "get": lambda pipe, key: pipe.get(key),
    "smembers": lambda pipe, key: pipe.smembers(key),
    "hgetall": lambda pipe, key: pipe.hgetall(key),
    "zrange": lambda pipe, key: pipe.zrange(key, 0, -1, withscores=True),
    "lrange": lambda pipe, key: pipe.lrange(key, 0, -1),
}


def peek(cache: Cache, reads: Sequence[tuple[str, str]]) -> list[Any]:
    """``[(kind, key), ...]`` -> ``[(exists, value), ...]`` in one round trip (read-only).
    Raises ``CacheUnavailable``."""

    def run(r: Any) -> list[Any]:
        pipe = r.pipeline(transaction=False)
        for kind, key in reads:
            pipe.exists(key)
            READERS[kind](pipe, key)
        return pipe.execute()

    raw = cache.run(PATH, run) if reads else []
    return [(bool(raw[i]), raw[i + 1]) for i in range(0, len(raw), 2)]


def version_copy(exists_value: tuple[bool, Any]) -> int | None:
    """A peeked version copy (``get`` of ``keys.version(scope)``) as an int, or None."""
    exists, value = exists_value
    return int(value) if exists and value is not None else None


def drop(cache: Cache, keys: Sequence[str]) -> None:
    """Delete ``keys`` one by one (any slots). Only for keys a read rebuilds whole."""

    def run(r: Any) -> None:
        pipe = r.pipeline(transaction=False)
        for key in keys:
            pipe.delete(key)
        pipe.execute()

    if keys:
        cache.run(PATH, run)
