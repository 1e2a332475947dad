"""Read-through with single-flight fills.

``read_through`` answers from Redis when it can. On a miss, ``Filler.fill`` rebuilds the
keys from Postgres: the first caller takes a lease (SET NX with a token) and loads; the
others wait up to ``lease_wait_ms`` for the fill to land and otherwise read Postgres
without writing. So N concurrent misses cost one load (plus at most the few that gave up
waiting), and a fill computed under an old version is discarded (see ``versioned``).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from cache import stats
from cache.client import NO_VALUE, Cache, CacheUnavailable
from cache.keys import Scope
from cache.lease import Lease, LeaseHeld, wait_for
from cache.versioned import PUBLISH, SET_MAX, publish_keys

T = TypeVar("T")

__all__ = ["Filler", "LeaseHeld", "Taken", "read_through"]


@dataclass(frozen=True)
class Taken:
    """A fill's lease as taken in its caller's own round trip (``Lease.queue_take`` in the
    caller's pipeline, its reply truthy): the scope's ``version`` as read (or reloaded)
    there, before the load, and the ``replies`` of what the caller read beside it, which
    are then ``load``'s argument."""

    lease: Lease
    version: int | None
    replies: list[Any] = field(default_factory=list)


class Filler:
    """Fills for one cache: knows where versions' truth lives."""

    def __init__(self, cache: Cache, load_version: Callable[[str], int],
                 load_versions: Callable[[list[str]], dict[str, int]] | None = None) -> None:
        self.cache = cache
        # load_version(row_name) -> the version in Postgres (0 if never bumped).
        self.load_version = load_version
        # load_versions(row_names) -> {row_name: version}, one statement for many scopes.
        self.load_versions = load_versions or (
            lambda names: {name: load_version(name) for name in names})

    def version(self, path: str, scope: Scope) -> int:
        """The scope's current version, loading the copy from Postgres when Redis lost it."""
        vkey = self.cache.keys.version(scope)
        raw = self.cache.run(path, lambda r: r.get(vkey))
        if raw is not None:
            return int(raw)
        return self.reload_version(path, scope)

    def reload_version(self, path: str, scope: Scope,
                       load: Callable[[], int] | None = None) -> int:
        """The scope's version when its Redis copy was found missing: its truth from
        Postgres (``load()``, e.g. on the caller's session; default ``load_version``), set
        as the copy unless a newer one landed meanwhile (the higher wins)."""
        vkey = self.cache.keys.version(scope)
        truth = load() if load is not None else self.load_version(scope.row_name)
        return int(
            self.cache.run(
                path,
                lambda r: SET_MAX(
                    keys=[vkey], args=[truth, self.cache.idle_ttl], client=r
                ),
            )
        )

    def fill(
        self,
        path: str,
        scope: Scope,
        keys: Sequence[str],
        load: Callable[..., T],
        stage: Callable[[Any, dict[str, str], T], None],
        ttl: int | None = None,
        only_if_missing: bool = False,
        preread: Callable[[Any], None] | None = None,
    ) -> T:
        """Load from Postgres and publish into ``keys`` if the version did not move.

        ``stage(pipe, temps, data)`` writes ``data`` into the temporary keys ``temps[key]``.
        ``ttl`` is the published keys' TTL in seconds (default: the cache's idle TTL).
        ``only_if_missing``: for a fill after a miss: if ``keys[0]`` exists by the time
        the lease is taken (a concurrent fill landed), raise ``LeaseHeld`` instead of
        loading again, so callers read it. Forced refreshes leave it False.
        ``preread(pipe)`` queues reads of other keys of the scope's slot in the lease's
        round trip; their replies (a list) are then ``load``'s argument.
        Returns the loaded data. Raises ``LeaseHeld`` if another filler holds the lease
        and ``CacheUnavailable`` if Redis fails.
        """
        return self.fill_and_read(path, scope, keys, load, stage, ttl=ttl,
                                  only_if_missing=only_if_missing, preread=preread)[0]

    def fill_and_read(
        self, path: str, scope: Scope, keys: Sequence[str], load: Callable[..., T],
        stage: Callable[[Any, dict[str, str], T], None], *, ttl: int | None = None,
        only_if_missing: bool = False, preread: Callable[[Any], None] | None = None,
        taken: Taken | None = None, then_read: Callable[[Any, T], None] | None = None,
    ) -> tuple[T, list[Any]]:
        """``fill``, and two ways to save round trips: ``taken``, the lease as taken in
        the caller's own round trip (``Taken``: no round trip here before the load;
        ``preread`` and ``only_if_missing`` then do not apply, the caller read what it
        needed beside the lease); ``then_read(pipe, data)`` queues reads (of any slot)
        after the publish, in its round trip. Returns ``(data, their replies)``."""
        cache = self.cache
        vkey = cache.keys.version(scope)
        if taken is not None:
            lease, raw_version, extra = taken.lease, taken.version, taken.replies
        else:
            lease = Lease(cache.keys.lease(keys[0]), cache.lease_ttl_ms)

            def take_lease(r: Any) -> list[Any]:
                # One round trip: the lease, the version copy (same slot: same tag), and a
                # second look at the key: a fill may have landed since our caller's miss.
                pipe = r.pipeline(transaction=False)
                lease.queue_take(pipe)
                pipe.get(vkey)
                pipe.exists(keys[0])
                if preread is not None:
                    preread(pipe)
                return pipe.execute()

            got, raw_version, filled, *extra = cache.run(path, take_lease)
            if got and filled and only_if_missing:
                # Someone else's fill landed meanwhile: don't load again; callers treat
                # this like a held lease and read the key.
                cache.run(path, lease.release)
                raise LeaseHeld(keys[0])
            if not got:
                raise LeaseHeld(keys[0])
        # Read before the load (see versioned.py); a lost copy is reloaded from Postgres.
        version = int(raw_version) if raw_version is not None else self.version(path, scope)
        data = load(extra) if preread is not None or taken is not None else load()
        temps = {key: cache.keys.temp(key, lease.token) for key in keys}
        at: list[int] = []  # where PUBLISH's answer is in the replies

        def publish(r: Any) -> list[Any]:
            pipe = r.pipeline(transaction=False)
            for temp in temps.values():
                pipe.delete(temp)
            stage(pipe, temps, data)
            at.append(len(pipe))
            PUBLISH(
                keys=publish_keys(cache.keys, scope, lease.key, list(temps.items())),
                args=[version, cache.idle_ttl, lease.token, ttl or cache.idle_ttl],
                client=pipe,
            )
            if then_read is not None:
                then_read(pipe, data)
            return pipe.execute()

        replies = cache.run(path, publish)
        if not replies[at[-1]]:
            stats.STALE_FILLS.labels(path).inc()
        return data, replies[at[-1] + 1:]

    def fill_batch(
        self,
        path: str,
        targets: Sequence[tuple[Scope, str]],
        load: Callable[[list[int]], dict[int, T]],
        stage: Callable[[Any, str, T], None],
        poll: Callable[[Any, list[str]], list[Any]],
        ttl: int | None = None,
    ) -> dict[int, T]:
        """``fill`` for many keys at once (the entities of a page), each under its own
        scope's version: one round trip takes the leases and reads the version copies, ONE
        ``load(indices)`` reads the keys this call leased from Postgres, one round trip
        publishes them (``PUBLISH`` per key: a key whose scope moved meanwhile is dropped,
        a key ``load`` did not answer is deleted). On a cluster each round trip is one
        pipeline per node (redis-py sends them all before reading any reply).

        Keys leased by another filler (or filled meanwhile) are polled with
        ``poll(redis, keys)`` (``NO_VALUE`` per key not there yet) for ``lease_wait_ms``;
        those still missing are loaded in a second batch without writing.
        Returns ``{index in targets: value}`` for every index ``load`` answered.
        Raises ``CacheUnavailable`` if Redis fails.
        """
        if not targets:
            return {}
        cache = self.cache
        token = uuid.uuid4().hex
        leases = [Lease(cache.keys.lease(key), cache.lease_ttl_ms, token) for _, key in targets]

        def take_leases(r: Any) -> list[Any]:
            pipe = r.pipeline(transaction=False)
            for (scope, key), lease in zip(targets, leases, strict=True):
                lease.queue_take(pipe)
                pipe.get(cache.keys.version(scope))
                pipe.exists(key)
            return pipe.execute()

        replies = cache.run(path, take_leases)
        mine: list[int] = []
        others: list[int] = []
        landed: list[int] = []
        versions: dict[Scope, int] = {}
        for i, (scope, _) in enumerate(targets):
            got, raw_version, filled = replies[3 * i:3 * i + 3]
            if not got:
                others.append(i)
            elif filled:
                landed.append(i)
            else:
                mine.append(i)
                if raw_version is not None:
                    versions.setdefault(scope, int(raw_version))
        lost = sorted({targets[i][0] for i in mine} - versions.keys(), key=str)
        if lost:
            # Copies Redis lost: their truth from Postgres (one statement), never restarted.
            truth = self.load_versions([s.row_name for s in lost])

            def set_max(r: Any) -> list[Any]:
                pipe = r.pipeline(transaction=False)
                for s in lost:
                    SET_MAX(keys=[cache.keys.version(s)],
                            args=[truth[s.row_name], cache.idle_ttl], client=pipe)
                return pipe.execute()

            versions.update(zip(lost, (int(v) for v in cache.run(path, set_max)),
                                strict=True))
        out: dict[int, T] = {}
        if mine:
            data = load(mine)
            out.update(data)

            def publish(r: Any) -> list[Any]:
                pipe = r.pipeline(transaction=False)
                for i in landed:
                    leases[i].release(pipe)
                at = []  # where each PUBLISH's answer is in the replies
                for i in mine:
                    scope, key = targets[i]
                    temp = cache.keys.temp(key, token)
                    pipe.delete(temp)
                    if i in data:
                        stage(pipe, temp, data[i])
                    at.append(len(pipe))
                    PUBLISH(
                        keys=publish_keys(cache.keys, scope, leases[i].key, [(key, temp)]),
                        args=[versions[scope], cache.idle_ttl, token, ttl or cache.idle_ttl],
                        client=pipe,
                    )
                replies = pipe.execute()
                return [replies[n] for n in at]

            published = cache.run(path, publish)
            stale = sum(1 for ok in published if not ok)
            if stale:
                stats.STALE_FILLS.labels(path).inc(stale)
        elif landed:
            cache.run(path, lambda r: [leases[i].release(r) for i in landed])
        waiting = others + landed
        if waiting:
            wait_keys = [targets[i][1] for i in waiting]

            def read_all() -> Any:
                values = cache.run(path, lambda r: poll(r, wait_keys))
                return NO_VALUE if any(v is NO_VALUE for v in values) else values

            values = wait_for(read_all, cache.lease_wait_ms) if others else read_all()
            if values is NO_VALUE:
                stats.count(path, "fallback")
                out.update(load(waiting))
            else:
                out.update((i, v) for i, v in zip(waiting, values, strict=True)
                           if v is not None)
        return out

    def fill_or_wait(
        self,
        path: str,
        scope: Scope,
        keys: Sequence[str],
        load: Callable[[], T],
        stage: Callable[[Any, dict[str, str], T], None],
        poll: Callable[[Any], T],
        refresh: bool = False,
    ) -> T:
        """``fill``; if another process holds the lease, poll ``poll(redis)`` (``NO_VALUE``
        until that fill lands) for up to ``lease_wait_ms``, then load without writing.

        So a stampede of misses on one key costs one load, not one per request. A miss
        finding the key already filled reads it; ``refresh=True`` (rebuild, repair)
        replaces it. Raises ``CacheUnavailable`` if Redis fails.
        """
        try:
            return self.fill(path, scope, keys, load, stage, only_if_missing=not refresh)
        except LeaseHeld:
            value = wait_for(lambda: self.cache.run(path, poll), self.cache.lease_wait_ms)
            if value is not NO_VALUE:
                return value
        stats.count(path, "fallback")
        return load()


def read_through(
    cache: Cache,
    path: str,
    read: Callable[[Any], T],
    fill: Callable[[], T],
    fallback: Callable[[], T],
) -> T:
    """Answer from Redis (``read``), else rebuild (``fill``), else Postgres (``fallback``).

    ``read(redis)`` returns ``NO_VALUE`` on a miss. ``fill()`` rebuilds and answers; if a
    concurrent fill holds the lease, we poll ``read`` for ``lease_wait_ms`` and then fall
    back. Redis errors anywhere end in ``fallback()``: the answer is always correct.
    """
    try:
        value = cache.run(path, read)
        if value is not NO_VALUE:
            stats.count(path, "hit")
            return value
        stats.count(path, "miss")
        try:
            return fill()
        except LeaseHeld:
            value = wait_for(lambda: cache.run(path, read), cache.lease_wait_ms)
            if value is not NO_VALUE:
                return value
    except CacheUnavailable:
        pass
    stats.count(path, "fallback")
    return fallback()
