"""Key layout and cache logic of the personalized feed (API.md section 4).

Two levels, all under one user's hash tag ``{u:<id>}`` and that user's calc version:

- **inputs** ``rf:inputs`` (10 min, the longest of the inputs' TTLs): one JSON object,
  ``{"v": <v>, "fellows", "colls", "stats", "prefs"}``: the viewer's fellows, joined
  collectives, interaction counts (per author, per post type) and feed preferences
  (preferred types, blocked authors, muted collectives), loaded from Postgres under calc
  version ``<v>`` and read only under that version. One key per viewer, not one per
  version: a new version's inputs overwrite it, and a forced page reads it in its first
  round trip (the key's name does not wait for the version);
- **ranking** ``rf:rank:v3`` (5 min): one string, a 32-byte header (the ranking's size,
  the entries kept, the clock it was ranked at, and the calc version ``<v>`` and controls'
  version ``<c>`` it was ranked under) then the first entries best first, 24 bytes each
  (``RECORD``: id and the six components, exactly; a page's scores are recomputed from
  them with the weights of ``<c>``, to the same bits). A page is read in the same
  round trip as the versions: one pipeline of the version copy, the controls, a
  ``GETRANGE`` of the header and one of the page's slice, served only if the header's
  ``<v>`` and ``<c>`` are the ones just read (so a cached page costs that round trip and
  the posts' one). One key per viewer, not one per version: a new ranking overwrites it
  and nothing of an older version lingers until its TTL. Only the first ``keep`` entries
  (``RANKED_CACHE_ENTRIES``, 200: 4.8 KB) are kept; a page past them ranks again at the
  kept clock, less the kept entries, and keeps the ranking extended (the kept entries
  unchanged, so a walk never shows a post twice). Candidates are the posts the viewer may
  see (public or in their collectives); a caller with the admin role sees every
  collective, so their ranking is kept apart, ``rf:rank:v3:a``.

And one key shared by every viewer, under its own tag: **controls** ``{rank}:config``, the
admin's switch and weights (``/api/admin/ranking/``) as JSON ``{"v", "enabled",
"weights"}``, ``v`` being the version of ``Scope(rank, "config")``, whose truth is a
``cache_versions`` row bumped in the same transaction as the change (whose outbox op
deletes this key). A page read fetches it in the same pipeline as the viewer's calc
version (one round trip, no SQL when warm); a missing copy is filled from Postgres, single
flight. A ranking whose header holds another ``<c>`` is not served, so no page computed
under older weights is read again, in any process, from the next page on.

``<v>`` is the scope ``Scope(u:<id>, "calc")``'s version, whose truth is a Postgres row
(``cache_versions``): every write that changes one of the viewer's inputs (heart, praise,
trophy, fellow either side, collective join/leave, preferences) calls ``touch`` in its
unit of work, which bumps the row in the same transaction; after commit the Redis copy
moves to the new version, so the next read finds inputs and a ranking header of the older
version, and recomputes. If Redis loses the copy it
is reloaded from Postgres (``Filler.version``), never restarted, so a restarted Redis
cannot serve a page of an older version.

What a version cannot see (posts deleted by their author) is filtered when a page is
rendered: its posts are their cached entities (``cache/posts.py``), and a delete drops
the post's entity in its own change. The viewer's new blocks or mutes move the version
once their change is applied (right after commit; a lost apply by the outbox relay).
"""

from __future__ import annotations

import contextlib
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

import numpy as np
import orjson

from cache import posts as cache_posts
from cache import stats
from cache.client import NO_VALUE, Cache, CacheUnavailable, pipelined
from cache.entities import Entity, Fields, queue_read_fields
from cache.fill import Filler, LeaseHeld, Taken
from cache.keys import Keyspace, Scope, user_tag
from cache.lease import Lease, wait_for

PATH = "ranked_feed"
INPUTS_PATH = "ranked_feed_inputs"
INPUT_NAMES = ("fellows", "colls", "stats", "prefs")


def scope(user_id: int) -> Scope:
    return Scope(user_tag(user_id), "calc")


CONFIG_TAG = "rank"
CONFIG_PATH = "ranking_config"


RANK_FORMAT = "v3"  # in the key: a deploy never reads another format's ranking


def rank_key(keys: Keyspace, user_id: int, admin: bool = False) -> str:
    """The viewer's one ranking key: the versions it was computed under are in its header
    (a new version overwrites it, nothing of an older one lingers until its TTL)."""
    parts: tuple[object, ...] = ("a",) if admin else ()
    return keys.key(user_tag(user_id), "rf", "rank", RANK_FORMAT, *parts)


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


def inputs_key(keys: Keyspace, user_id: int) -> str:
    """The viewer's one inputs key: JSON ``{"v": <calc version>, <name>: value, ...}``."""
    return keys.key(user_tag(user_id), "rf", "inputs")


def touch(uow: Any, user_id: int) -> None:
    """Bump ``user_id``'s calc version in ``uow``'s transaction (their next page is new)."""
    uow.change(scope(user_id))


# --- the ranking: one string per viewer, ids, scores and components of its first pages ---

# Header: the ranking's size (candidates), the entries kept, its clock (µs since the
# epoch) so that an extension ranks with the same recency, and the viewer's calc version
# and the controls' version it was ranked under (a reader serves it only when both are
# the current ones).
HEADER = struct.Struct("<IIqqq")


class Head(NamedTuple):
    count: int
    kept: int
    clock_us: int
    version: int
    config_version: int
# One entry: 24 bytes. Components are kept exactly: recency as a float64; social,
# collective and viewed as flags; interaction (0..40), engagement × 2 (half points) and
# post_type / 10 as integers (each component is exactly such a value). The score is not
# kept: it is a function of these and the weights of the controls' version in the header
# (``Score``), recomputed for the page's entries to the same bits.
RECORD = np.dtype([("id", "<i8"), ("recency", "<f8"), ("post_type", "<u4"),
                   ("engagement2", "<i2"), ("interaction", "u1"), ("flags", "u1")])
SOCIAL, COLLECTIVE, VIEWED = 1, 2, 4

# score(components (n, 6) in the score's order, viewed (n,)) -> the n final scores
Score = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Entry:
    """One ranked post as cached: id, final score, raw components, viewed flag."""

    id: int
    score: float
    components: tuple[float, ...]
    viewed: bool


def pack(ids: np.ndarray, components: np.ndarray, viewed: np.ndarray) -> np.ndarray:
    """Ranked columns (components in the score's order: recency, social, interaction,
    engagement, collective, post_type) as ``RECORD`` entries."""
    out = np.zeros(len(ids), dtype=RECORD)
    out["id"], out["recency"] = ids, components[:, 0]
    out["interaction"] = components[:, 2]
    out["engagement2"] = np.rint(components[:, 3] * 2)
    out["post_type"] = np.rint(components[:, 5] / 10)
    out["flags"] = ((components[:, 1] > 0) * SOCIAL + (components[:, 4] > 0) * COLLECTIVE
                    + viewed * VIEWED)
    return out


def components(records: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The (n, 6) components (the score's order) and the viewed flags of ``RECORD``
    entries, exactly as ``pack`` was given them."""
    flags = records["flags"]
    out = np.empty((len(records), 6), dtype=np.float64)
    out[:, 0] = records["recency"]
    out[:, 1] = np.where(flags & SOCIAL, 50.0, 0.0)
    out[:, 2] = records["interaction"]
    out[:, 3] = records["engagement2"] / 2
    out[:, 4] = np.where(flags & COLLECTIVE, 30.0, 0.0)
    out[:, 5] = 10.0 * records["post_type"].astype(np.float64)
    return out, (flags & VIEWED) != 0


def entries(records: np.ndarray, score: Score) -> list[Entry]:
    """``RECORD`` entries (one page) as ``Entry`` values: their six components and
    ``score`` of them."""
    parts, viewed = components(records)
    scores = score(parts, viewed)
    return [Entry(int(i), float(s), tuple(p), bool(v)) for i, s, p, v in
            zip(records["id"], scores, parts.tolist(), viewed, strict=True)]


@dataclass(frozen=True)
class Ranking:
    """A computed ranking: every candidate best first, and the clock it was ranked at."""

    clock_us: int
    records: np.ndarray  # RECORD


@dataclass(frozen=True)
class RankedPage:
    count: int  # entries in the whole ranking
    entries: list[Entry]  # the requested slice
    # The slice's post entities as read in a fill's publish round trip (their fields, in
    # ``entries`` order, ``{}`` where not cached, for ``EntityStore.complete``), or None:
    # not read yet.
    posts: tuple[list[Entity], list[Fields]] | None = None


@dataclass(frozen=True)
class _Cached:
    count: int
    kept: int
    clock_us: int
    records: np.ndarray  # the requested slice (RECORD)
    posts: tuple[list[Entity], list[Fields]] | None = None  # RankedPage.posts


@dataclass(frozen=True)
class FirstRead:
    """What a page's first round trip read: the viewer's calc version (None when the cache
    is unusable), the controls, and the requested slice of the cached ranking when it was
    ranked under both (None: a miss)."""

    version: int | None
    controls: Controls
    cached: _Cached | None
    # A forced page's fill lease, taken in that round trip (with the version and the
    # inputs key as read beside it), or None (not forced, or another holds it).
    taken: Taken | None = None


def _slice(raw_head: bytes | None, raw: bytes | None, version: int,
           config_version: int) -> _Cached | None:
    head = decode_header(raw_head or b"")
    if (head is None or raw is None or len(raw) % RECORD.itemsize
            or head.version != version or head.config_version != config_version):
        return None
    return _Cached(head.count, head.kept, head.clock_us, np.frombuffer(raw, dtype=RECORD))


def encode(ranking: Ranking, keep: int, version: int, config_version: int) -> bytes:
    kept = ranking.records[:keep]
    return HEADER.pack(len(ranking.records), len(kept), ranking.clock_us, version,
                       config_version) + kept.tobytes()


def decode_header(raw: bytes) -> Head | None:
    """The header of a cached ranking, None for a missing or malformed one."""
    if len(raw) < HEADER.size:
        return None
    return Head(*HEADER.unpack_from(raw))


def decode(raw: bytes) -> tuple[Head, np.ndarray] | None:
    """The header and every kept entry of a whole cached ranking (None if malformed)."""
    head = decode_header(raw)
    if head is None or len(raw) != HEADER.size + head[1] * RECORD.itemsize:
        return None
    return head, np.frombuffer(raw, dtype=RECORD, offset=HEADER.size)


def _bounds(start: int, stop: int) -> tuple[int, int]:
    """The byte range of entries ``[start, stop)`` in a cached ranking."""
    return HEADER.size + start * RECORD.itemsize, HEADER.size + stop * RECORD.itemsize


def _page(ranking: Ranking, start: int, stop: int, score: Score) -> RankedPage:
    return RankedPage(len(ranking.records), entries(ranking.records[start:stop], score))


def now_us(now: datetime) -> int:
    """A clock as integer microseconds since the epoch (exact)."""
    return (now - EPOCH) // timedelta(microseconds=1)


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass
class InputsRead:
    """A fill's view of the viewer's cached inputs: ``raw``, their key as read in the
    lease's round trip (or None); ``writes``, what was loaded from Postgres meanwhile,
    ``(key, value, ttl)``, for the publish's round trip."""

    raw: Any
    writes: list[tuple[str, bytes, int]] = field(default_factory=list)


def stage_inputs(pipe: Any, writes: list[tuple[str, bytes, int]]) -> None:
    for key, value, ttl in writes:
        pipe.set(key, value, ex=ttl)


# compute(version, clock_us, exclude, the fill's InputsRead or None)
Compute = Callable[[int | None, int, np.ndarray | None, "InputsRead | None"], Ranking]


class RankedFeedCache:
    """Reads and fills of one viewer's ranking and inputs."""

    def __init__(self, cache: Cache, filler: Filler, page_ttl: int,
                 input_ttls: dict[str, int], keep: int = 200) -> None:
        self.cache = cache
        self.filler = filler
        self.page_ttl = page_ttl
        self.input_ttls = input_ttls
        self.keep = keep

    def first_read(self, user_id: int, start: int, stop: int, admin: bool,
                   load_controls: Callable[[], Controls],
                   load_version: Callable[[], int] | None = None,
                   force: bool = False) -> FirstRead:
        """One round trip: the viewer's calc version, the ranking controls, and the header
        and entries ``[start, stop)`` of the viewer's cached ranking (four raw commands,
        ``cache.client.pipelined``: the controls' slot and the viewer's; on a cluster one
        pipeline per node); ``force``
        (a page that ranks now): the fill's lease and the viewer's inputs instead of the
        ranking, so that the fill needs no round trip of its own before the publish. A
        missing copy of the controls or of the version is loaded from Postgres
        (``load_controls()``, refilled single-flight; ``load_version()`` for the calc
        version's row, default the filler's loader). Never raises for Redis trouble."""
        vkey = self.cache.keys.version(scope(user_id))
        ckey = config_key(self.cache.keys)
        key = rank_key(self.cache.keys, user_id, admin)
        lo, hi = _bounds(start, stop)
        lease = Lease(self.cache.keys.lease(key), self.cache.lease_ttl_ms)

        if force:
            rest = [lease.take_command(), ("GET", inputs_key(self.cache.keys, user_id))]
        else:
            rest = [("GETRANGE", key, 0, HEADER.size - 1), ("GETRANGE", key, lo, hi - 1)]
        commands = [("GET", vkey), ("GET", ckey), *rest]

        try:
            raw_version, raw_controls, third, fourth = self.cache.run(
                PATH, lambda r: pipelined(r, commands, raw=True))
        except CacheUnavailable:
            stats.count(CONFIG_PATH, "fallback")
            return FirstRead(None, load_controls(), None)
        if raw_controls is not None:
            stats.count(CONFIG_PATH, "hit")
            controls = Controls.decode(raw_controls)
        else:
            stats.count(CONFIG_PATH, "miss")
            controls = self._fill_controls(load_controls)
        if raw_version is not None:
            version = int(raw_version)
        else:
            try:
                version = self.filler.reload_version(PATH, scope(user_id), load_version)
            except CacheUnavailable:
                return FirstRead(None, controls, None)
        if force:  # the version as read (or reloaded) beside the lease, before the load
            taken = Taken(lease, version, [fourth]) if third else None
            return FirstRead(version, controls, None, taken)
        return FirstRead(version, controls, _slice(third, fourth, version, controls.version))

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
        first: FirstRead,
        start: int,
        stop: int,
        compute: Compute,
        score: Score,
        clock_us: int,
        force: bool = False,
        admin: bool = False,
    ) -> RankedPage:
        """Entries ``[start, stop)`` of the viewer's ranking and its size.

        ``first`` is what ``first_read`` read (its ``version`` None: the cache is
        unusable; its ``cached``: the slice when the cached ranking is current).
        ``compute(version, clock_us, exclude, inputs)`` ranks from Postgres at
        ``clock_us``, less the posts ``exclude`` (``version`` None when the cache is
        unusable: inputs then come from Postgres too); ``score`` gives the entries'
        scores from their components (under ``first.controls``); ``inputs``, when not None, holds
        the viewer's cached inputs as read in the fill's lease round trip, and collects
        those to write in its publish round trip (``InputsRead``). The first ``keep``
        entries are cached; a page past them ranks again at the cached ranking's clock,
        less the entries already kept, and keeps the ranking extended to twice as many (or
        the page's end). ``force`` recomputes and replaces the cached ranking
        (``invalidate_cache=true``); ``admin`` picks the admin-role ranking (every
        collective's posts). Never raises for Redis trouble.
        """
        version = first.version
        if version is None:
            stats.count(PATH, "fallback")
            return _page(compute(None, clock_us, None, None), start, stop, score)
        config_version = first.controls.version
        key = rank_key(self.cache.keys, user_id, admin)
        lo, hi = _bounds(start, stop)

        def read(r: Any) -> Any:
            pipe = r.pipeline(transaction=False)
            pipe.getrange(key, 0, HEADER.size - 1)
            pipe.getrange(key, lo, hi - 1)
            got = _slice(*pipe.execute(), version, config_version)
            return NO_VALUE if got is None else got

        ikey = inputs_key(self.cache.keys, user_id)
        pending: list[InputsRead] = []

        def load(replies: list[Any]) -> Ranking:
            pending.append(InputsRead(replies[0]))
            return compute(version, clock_us, None, pending[-1])

        def stage(pipe: Any, temps: dict[str, str], ranking: Ranking) -> None:
            pipe.set(temps[key], encode(ranking, max(self.keep, stop), version,
                                        config_version))
            stage_inputs(pipe, pending[-1].writes)

        wanted: list[Entity] = []
        parse: list[Callable[[Sequence[Any]], list[Fields]]] = []

        def read_posts(pipe: Any, ranking: Ranking) -> None:
            # The page's post entities, read in the publish's round trip.
            wanted.extend(cache_posts.entity(self.cache.keys, int(i))
                          for i in ranking.records[start:stop]["id"])
            parse.append(queue_read_fields(pipe, wanted, cache_posts.FIELDS))

        def fill() -> _Cached:
            ranking, found = self.filler.fill_and_read(
                PATH, scope(user_id), [key], load, stage, ttl=self.page_ttl,
                preread=lambda pipe: pipe.get(ikey), taken=first.taken,
                then_read=read_posts)
            return _Cached(len(ranking.records), len(ranking.records), ranking.clock_us,
                           ranking.records[start:stop], (wanted, parse[-1](found)))

        def fallback() -> _Cached:
            stats.count(PATH, "fallback")
            ranking = compute(None, clock_us, None, None)
            return _Cached(len(ranking.records), len(ranking.records), ranking.clock_us,
                           ranking.records[start:stop])

        if first.cached is not None and not force:
            stats.count(PATH, "hit")
            got = first.cached
        else:
            stats.count(PATH, "miss")
            try:
                if force and first.taken is None:
                    raise LeaseHeld(key)  # another process holds the fill's lease
                got = fill()
            except LeaseHeld:
                # Another process fills it: wait for its fill (not a forced page: that
                # one is computed now), else answer from Postgres without writing.
                waited = NO_VALUE
                if not force:
                    with contextlib.suppress(CacheUnavailable):
                        waited = wait_for(lambda: self.cache.run(PATH, read),
                                          self.cache.lease_wait_ms)
                got = fallback() if waited is NO_VALUE else waited
            except CacheUnavailable:
                got = fallback()
        if stop > got.kept and got.kept < got.count:  # past the kept entries: extend
            return self._extend(user_id, version, config_version, key, start, stop,
                                compute, score, clock_us)
        return RankedPage(got.count, entries(got.records, score), got.posts)

    def _extend(self, user_id: int, version: int, config_version: int, key: str,
                start: int, stop: int, compute: Compute, score: Score,
                clock_us: int) -> RankedPage:
        """Rank again at the cached ranking's clock, less the entries kept, and keep the
        ranking extended (the kept entries first, unchanged, so no walk sees a post twice);
        answered without writing when another process holds the lease or Redis fails."""
        stats.count(PATH, "extend")
        try:
            whole = decode(self.cache.run(PATH, lambda r: r.get(key)) or b"")
        except CacheUnavailable:
            whole = None
        if whole is None or whole[0].version != version or (
                whole[0].config_version != config_version):
            # gone, unreadable or replaced meanwhile: a fresh ranking, not kept
            return _page(compute(None, clock_us, None, None), start, stop, score)
        head, prefix = whole
        clock = head.clock_us
        merged: list[Ranking] = []

        def load() -> Ranking:
            rest = compute(version, clock, prefix["id"], None)
            merged.append(Ranking(clock, np.concatenate([prefix, rest.records])))
            return merged[0]

        def stage(pipe: Any, temps: dict[str, str], ranking: Ranking) -> None:
            pipe.set(temps[key], encode(ranking, max(stop, 2 * head.kept), version,
                                        config_version))

        try:
            ranking = self.filler.fill(PATH, scope(user_id), [key], load, stage,
                                       ttl=self.page_ttl)
        except (LeaseHeld, CacheUnavailable):
            ranking = merged[0] if merged else load()
        return _page(ranking, start, stop, score)

    def inputs(
        self, user_id: int, version: int, load: Callable[[], dict[str, Any]],
        cached: InputsRead | None = None,
    ) -> dict[str, Any]:
        """The viewer's inputs at ``version`` (by name, ``INPUT_NAMES``): from their one
        key in Redis (one round trip) when it was written under ``version``; else
        ``load()`` gives every input from Postgres (JSON-able values, one statement) and
        the key is written with them under ``version`` (``inputs_ttl``). With ``cached``
        (a fill's ``InputsRead``) there is no round trip here: the key was read in the
        fill's lease round trip and is written in its publish round trip. The value
        carries the version it was loaded under (read before the load), so a value loaded
        after a bump is never read under the new version; values are only ever as new as
        or newer than their version. One key per viewer: a new version's inputs overwrite
        an older version's (nothing lingers until its TTL)."""
        key = inputs_key(self.cache.keys, user_id)
        if cached is not None:
            raw = cached.raw
        else:
            try:
                raw = self.cache.run(INPUTS_PATH, lambda r: r.get(key))
            except CacheUnavailable:
                raw = None
        value = orjson.loads(raw) if raw is not None else None
        if isinstance(value, dict) and value.get("v") == version:
            stats.count(INPUTS_PATH, "hit")
            return {name: value[name] for name in INPUT_NAMES}
        stats.count(INPUTS_PATH, "miss")
        loaded = load()
        values = {name: loaded[name] for name in INPUT_NAMES}
        writes = [(key, orjson.dumps({"v": version, **values}), self.inputs_ttl)]
        if cached is not None:
            cached.writes.extend(writes)
            return values

        def store(r: Any) -> None:
            pipe = r.pipeline(transaction=False)
            stage_inputs(pipe, writes)
            pipe.execute()

        with contextlib.suppress(CacheUnavailable):  # answered anyway; cached next time
            self.cache.run(INPUTS_PATH, store)
        return values

    @property
    def inputs_ttl(self) -> int:
        """The inputs key's TTL: the longest of the inputs' (a version-checked copy; the
        TTL only bounds its memory)."""
        return max(self.input_ttls.values())

    # --- the operator's rebuild and warm of one user ------------------------------------

    def rebuild(self, user_id: int, path: str, page: Callable[[], Any]) -> None:
        """The inputs are cached under the calc version and only loaded when missing or of
        another version: drop them, then ``page()`` (a forced page) recomputes the
        ranking, which reloads them, version-checked."""
        key = inputs_key(self.cache.keys, user_id)

        def drop(r: Any) -> None:
            r.delete(key)

        self.cache.run(path, drop)
        page()

    def release(self, first: FirstRead) -> None:
        """Free a forced page's lease that ``first_read`` took and no fill will use."""
        if first.taken is not None:
            with contextlib.suppress(CacheUnavailable):
                self.cache.run(PATH, first.taken.lease.release)

    def warm(self, page: Callable[[], Any]) -> None:
        """``page()`` reads the first page through: a miss fills inputs and ranking."""
        page()


def check(cache: Cache, user_id: int, truth: Callable[[], dict[str, Any]],
          load_version: Callable[[], int]) -> list[tuple[str, Any, Any]]:
    """``(key#name, cached, Postgres)`` for each cached input of ``user_id`` at their
    current calc version that differs from ``truth()`` (inputs by name), compared only when
    the version is settled: the Redis copy equals ``load_version()`` (the Postgres row)
    read before and after the truth. The ranking is a page cache of a time-dependent score
    that others' activity moves by design: only its shape is checked (a whole header and
    entries). Read-only; raises ``CacheUnavailable``."""
    keys = cache.keys
    vkey, ikey = keys.version(scope(user_id)), inputs_key(keys, user_id)
    # Both rankings, whatever versions they were ranked under (an older one is never
    # served): only their shape is checked.
    ranks = [rank_key(keys, user_id, admin) for admin in (False, True)]

    def read(r: Any) -> list[Any]:  # one slot: the user's
        pipe = r.pipeline(transaction=False)
        for key in (vkey, ikey, *ranks):
            pipe.get(key)
        return pipe.execute()

    raw_version, raw_inputs, *raw_ranks = cache.run(PATH, read)
    if raw_version is None:
        return []
    version = int(raw_version)
    before = load_version()
    inputs = truth()
    if load_version() != before or before != version:
        return []  # a write moved the version meanwhile, or its apply is pending
    out: list[tuple[str, Any, Any]] = []
    cached = orjson.loads(raw_inputs) if raw_inputs is not None else None
    if isinstance(cached, dict) and cached.get("v") == version:
        for name in INPUT_NAMES:
            want = orjson.loads(orjson.dumps(inputs[name]))
            if cached.get(name) != want:
                out.append((f"{ikey}#{name}", cached.get(name), want))
    for key, raw in zip(ranks, raw_ranks, strict=True):
        if raw is not None:
            whole = decode(raw)
            if whole is None or whole[0].kept > whole[0].count:
                out.append((key, f"{len(raw)} bytes", "a header and whole entries"))
    return out
