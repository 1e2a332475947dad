"""Key layout and cache logic of the personalized feed (API.md section 4).

Two levels, all under one user's hash tag ``{u:<id>}`` and that user's calc version:

- **inputs** ``rf:fellows:<v>``, ``rf:colls:<v>`` (5 min), ``rf:stats:<v>`` (10 min):
  the viewer's fellows, joined collectives and interaction counts (per author, per post
  type), JSON strings;
- **ranking** ``rf:rank:<v>:<c>`` (5 min): a list whose head is ``{"n": count}`` and whose
  entries are the viewer's ranked candidates ``[id, score, [6 components], viewed]``;
  a page is one ``LRANGE`` of it. ``<c>`` is the ranking controls' version (below).
  Candidates are the posts the viewer may see (public or in their collectives); a caller
  with the admin role sees every collective, so their ranking is kept apart,
  ``rf:rank:<v>:<c>:a``.

And one key shared by every viewer, under its own tag: **controls** ``{rank}:config``, the
admin's switch and weights (``/api/admin/ranking/``) as JSON ``{"v", "enabled",
"weights"}``, ``v`` being the version of ``Scope(rank, "config")``, whose truth is a
``cache_versions`` row bumped in the same transaction as the change (whose outbox op
deletes this key). A page read fetches it in the same pipeline as the viewer's calc
version (one round trip, no SQL when warm); a missing copy is filled from Postgres, single
flight. A new ``<c>`` keys new rankings, so no page computed under older weights is read
again, in any process, from the next page on.

``<v>`` is the scope ``Scope(u:<id>, "calc")``'s version, whose truth is a Postgres row
(``cache_versions``): every write that changes one of the viewer's inputs (heart, praise,
trophy, fellow either side, collective join/leave, preferences) calls ``touch`` in its
unit of work, which bumps the row in the same transaction; after commit the Redis copy
moves to the new version, so the next read looks up keys nobody has written yet and
recomputes. Old keys are never read again and expire by TTL. If Redis loses the copy it
is reloaded from Postgres (``Filler.version``), never restarted, so a restarted Redis
cannot serve a page of an older version.

What a version cannot see (posts deleted by their author, and, while a write's apply is
still pending, the viewer's new blocks or mutes) is filtered when a page is rendered, by
a batched SQL check of the page's ids (``storage.ranked_feed.visible_posts``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from cache import stats
from cache.client import NO_VALUE, Cache, CacheUnavailable
from cache.fill import Filler, LeaseHeld, read_through
from cache.keys import Keyspace, Scope, user_tag

PATH = "ranked_feed"
INPUTS_PATH = "ranked_feed_inputs"
INPUT_NAMES = ("fellows", "colls", "stats")


def scope(user_id: int) -> Scope:
    return Scope(user_tag(user_id), "calc")


CONFIG_TAG = "rank"
CONFIG_PATH = "ranking_config"


def rank_key(
    keys: Keyspace, user_id: int, version: int, config_version: int, admin: bool = False
) -> str:
    parts: tuple[object, ...] = (version, config_version, "a") if admin else (
        version, config_version)
    return keys.key(user_tag(user_id), "rf", "rank", *parts)


def config_scope() -> Scope:
    return Scope(CONFIG_TAG, "config")


def config_key(keys: Keyspace) -> str:
    return keys.key(CONFIG_TAG, "config")


def controls_changed(uow: Any, keys: Keyspace) -> None:
    """Bump the controls' version in ``uow``'s transaction; after commit their Redis copy
    is dropped, so every process reloads them at its next page."""
    uow.change(config_scope()).op("DEL", config_key(keys))


@dataclass(frozen=True)
class Controls:
    """The ranking controls as cached: ``weights`` holds only the weights an admin set."""

    version: int
    enabled: bool
    weights: dict[str, float]

    def encode(self) -> bytes:
        return orjson.dumps({"v": self.version, "enabled": self.enabled,
                             "weights": self.weights})

    @classmethod
    def decode(cls, raw: bytes) -> Controls:
        data = orjson.loads(raw)
        return cls(int(data["v"]), bool(data["enabled"]),
                   {str(k): float(w) for k, w in data["weights"].items()})


def input_key(keys: Keyspace, user_id: int, name: str, version: int) -> str:
    if name not in INPUT_NAMES:
        raise ValueError(f"unknown ranked feed input {name!r}")
    return keys.key(user_tag(user_id), "rf", name, version)


def touch(uow: Any, user_id: int) -> None:
    """Bump ``user_id``'s calc version in ``uow``'s transaction (their next page is new)."""
    uow.change(scope(user_id))


@dataclass(frozen=True)
class Entry:
    """One ranked post as cached: id, final score, raw components, viewed flag."""

    id: int
    score: float
    components: tuple[float, ...]
    viewed: bool

    def encode(self) -> bytes:
        return orjson.dumps([self.id, self.score, list(self.components), self.viewed])

    @classmethod
    def decode(cls, raw: bytes) -> Entry:
        pid, score, parts, viewed = orjson.loads(raw)
        return cls(int(pid), float(score), tuple(float(p) for p in parts), bool(viewed))


@dataclass(frozen=True)
class RankedPage:
    count: int  # entries in the whole ranking
    entries: list[Entry]  # the requested slice


def _slice(entries: list[Entry], start: int, stop: int) -> RankedPage:
    return RankedPage(len(entries), entries[start:stop])


class RankedFeedCache:
    """Reads and fills of one viewer's ranking and inputs."""

    def __init__(self, cache: Cache, filler: Filler, page_ttl: int,
                 input_ttls: dict[str, int]) -> None:
        self.cache = cache
        self.filler = filler
        self.page_ttl = page_ttl
        self.input_ttls = input_ttls

    def versions(self, user_id: int, load_controls: Callable[[], Controls]
                 ) -> tuple[int | None, Controls]:
        """The viewer's calc version (None when the cache is unusable) and the ranking
        controls, in one round trip when both copies are in Redis. A missing copy is
        loaded from Postgres (``load_controls()`` for the controls, refilled single-flight).
        Never raises for Redis trouble."""
        vkey = self.cache.keys.version(scope(user_id))
        ckey = config_key(self.cache.keys)

        def read(r: Any) -> list[Any]:
            pipe = r.pipeline(transaction=False)
            pipe.get(vkey)
            pipe.get(ckey)
            return pipe.execute()

        try:
            raw_version, raw_controls = self.cache.run(PATH, read)
        except CacheUnavailable:
            stats.count(CONFIG_PATH, "fallback")
            return None, load_controls()
        if raw_controls is not None:
            stats.count(CONFIG_PATH, "hit")
            controls = Controls.decode(raw_controls)
        else:
            stats.count(CONFIG_PATH, "miss")
            controls = self._fill_controls(load_controls)
        if raw_version is not None:
            return int(raw_version), controls
        try:
            return self.filler.version(PATH, scope(user_id)), controls
        except CacheUnavailable:
            return None, controls

    def _fill_controls(self, load_controls: Callable[[], Controls]) -> Controls:
        key = config_key(self.cache.keys)

        def stage(pipe: Any, temps: dict[str, str], controls: Controls) -> None:
            pipe.set(temps[key], controls.encode())

        try:
            return self.filler.fill(CONFIG_PATH, config_scope(), [key], load_controls, stage)
        except (LeaseHeld, CacheUnavailable):
            return load_controls()  # another process is filling it, or Redis failed

    def page(
        self,
        user_id: int,
        version: int | None,
        config_version: int,
        start: int,
        stop: int,
        compute: Callable[[int | None], list[Entry]],
        force: bool = False,
        admin: bool = False,
    ) -> RankedPage:
        """Entries ``[start, stop)`` of the viewer's ranking and its size.

        ``version`` and ``config_version`` are the viewer's calc version and the controls'
        version as ``versions`` read them (``version`` None: the cache is unusable).
        ``compute(version)`` ranks from Postgres (``version`` is None when the cache is
        unusable: inputs then come from Postgres too). ``force`` recomputes and replaces
        the cached ranking (``invalidate_cache=true``); ``admin`` picks the admin-role
        ranking (every collective's posts). Never raises for Redis trouble.
        """
        if version is None:
            stats.count(PATH, "fallback")
            return _slice(compute(None), start, stop)
        key = rank_key(self.cache.keys, user_id, version, config_version, admin)

        def read(r: Any) -> RankedPage:
            pipe = r.pipeline(transaction=False)
            pipe.lindex(key, 0)
            pipe.lrange(key, start + 1, stop)
            head, raw = pipe.execute()
            if head is None:
                return NO_VALUE
            return RankedPage(int(orjson.loads(head)["n"]), [Entry.decode(e) for e in raw])

        def stage(pipe: Any, temps: dict[str, str], entries: list[Entry]) -> None:
            pipe.rpush(temps[key], orjson.dumps({"n": len(entries)}),
                       *(e.encode() for e in entries))

        def fill() -> RankedPage:
            entries = self.filler.fill(PATH, scope(user_id), [key],
                                       lambda: compute(version), stage, ttl=self.page_ttl)
            return _slice(entries, start, stop)

        def fallback() -> RankedPage:
            return _slice(compute(None), start, stop)

        if force:
            stats.count(PATH, "miss")
            try:
                return fill()
            except (LeaseHeld, CacheUnavailable):
                stats.count(PATH, "fallback")
                return fallback()
        return read_through(self.cache, PATH, read, fill, fallback)

    def inputs(
        self, user_id: int, version: int, loaders: dict[str, Callable[[], Any]]
    ) -> dict[str, Any]:
        """The viewer's inputs at ``version``: cached ones from Redis (one round trip),
        the others from ``loaders[name]()`` (JSON-able values), then cached with their TTL.
        Keys carry the version, so a value loaded after a bump can never be read under the
        new version; values are only ever as new as or newer than their key's version."""
        keys = {name: input_key(self.cache.keys, user_id, name, version) for name in loaders}
        try:
            raw = self.cache.run(INPUTS_PATH, lambda r: r.mget(list(keys.values())))
        except CacheUnavailable:
            raw = [None] * len(keys)
        values: dict[str, Any] = {}
        missing: dict[str, Any] = {}
        for name, cached in zip(keys, raw, strict=True):
            if cached is not None:
                stats.count(INPUTS_PATH, "hit")
                values[name] = orjson.loads(cached)
            else:
                stats.count(INPUTS_PATH, "miss")
                values[name] = missing[name] = loaders[name]()
        if missing:
            def store(r: Any) -> None:
                pipe = r.pipeline(transaction=False)
                for name, value in missing.items():
                    pipe.set(keys[name], orjson.dumps(value), ex=self.input_ttls[name])
                pipe.execute()

            with contextlib.suppress(CacheUnavailable):  # answered anyway; cached next time
                self.cache.run(INPUTS_PATH, store)
        return values
