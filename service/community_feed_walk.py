"""A community feed page's walk (API section 3): who sees what, the ordered sources of
keys after a cursor, and the loop that collects a page from them.

Every feed orders its posts by one exact, total key ``(score, post id)`` (``Key``), so a
walk resumes strictly after the last key it returned:

- ``RecentSource``: the recent sorted set (``cache.community_feed.recent_after``); past
  its (trimmed) end, and with Redis down, the same keyset in Postgres.
- ``FollowingSource``: fan-out on read, the followees' author sets merged; Postgres when
  one ran out trimmed or Redis is down.
- ``FilteredSource``: a filtered ``recent`` or ``following`` walk read from a Postgres
  index (``storage.posts.matching_keys``), Redis up or down alike.
- ``TrendingSource``: one walk's durable ranking snapshot, then its deep tail
  (``service/community_feed_trending.py``).

Visibility: the cached structures hold every live post and are shared by all viewers; a
page keeps the rows the viewer may see (``Visibility``: public posts, plus their
collectives' for members, all for admins). A page examines at most ``SCAN_BUDGET`` keys:
a viewer who may see few of them gets what was found, ``has_more`` true and a cursor
after the last key examined.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cache import community_feed as cf
from cache import posts as cache_posts
from cache.client import CacheUnavailable
from service import community_feed_trending as trending
from service.bootstrap import AppState
from service.community_feed_cursor import BadCursor
from storage import posts

Key = tuple[int, int]  # (score, post id): the exact sort key of every feed

# Keys one page may examine: a viewer who may see few of the posts (or a narrow filter)
# gets the posts found within it, ``has_more`` true and a cursor to go on from there.
SCAN_BUDGET = 2000

OUTCOME_RANK = {"hit": 0, "miss": 1, "fallback": 2}
HINT = "trending_pointer"  # AppState.hints: the shared snapshot this process saw last


@dataclass(frozen=True)
class Visibility:
    """Which posts one viewer may see: public ones, plus those of ``collectives``
    (``None``: every post, for admins). ``sql``: ``(viewer, is_admin)`` when Postgres
    applies the rule itself (Redis down: no member set to read), rows and counts then
    come filtered and ``collectives`` is None."""

    collectives: frozenset[int] | None
    sql: tuple[int | None, bool] | None = None

    @classmethod
    def of(cls, collectives: Iterable[int] | None) -> Visibility:
        return cls(None if collectives is None else frozenset(collectives))

    def sees(self, collective_id: int | None) -> bool:
        return (collective_id is None or self.collectives is None
                or collective_id in self.collectives)

    def total(self, public: int, per_collective: dict[int, int]) -> int:
        """A viewer's count from a count grouped by collective."""
        return public + sum(n for c, n in per_collective.items() if self.sees(c))


PUBLIC = Visibility(frozenset())


class Source:
    """Yields the feed's keys in order, strictly after a key. ``exact``: every key it
    yields is a post of the page (filters and visibility applied by the source).
    ``more``: after a short answer, the key to resume after (None: the end)."""

    outcome = "hit"
    exact = False
    more: Key | None = None
    # A first read done with the page's count (``cf.Prefetch``) and its answer.
    prefetched: tuple[cf.Prefetch, list[cf.KeyRange]] | None = None

    def next_keys(self, after: Key | None, n: int) -> list[Key]:
        raise NotImplementedError

    def prefetch(self, after: Key | None, n: int) -> cf.Prefetch | None:
        """The Redis read ``next_keys(after, n)`` starts with, if it can ride with the
        page's count (one round trip less); None if it cannot."""
        return None

    def take(self, after: Key | None, n: int) -> list[cf.KeyRange] | None:
        """The prefetched answer of the read ``next_keys(after, n)`` starts with (used
        once), if it was prefetched and found all its keys."""
        got, self.prefetched = self.prefetched, None
        if got is None or (got[0].after, got[0].n) != (after, n):
            return None
        return got[1] if all(r.entries is not None for r in got[1]) else None


def _recent_pg(app: AppState, after: Key | None, n: int,
               authors: Sequence[int] | None = None) -> list[Key]:
    with app.db.read() as session:
        return posts.recent_keys(session, n, after, authors)


class RecentSource(Source):
    """The recent sorted set; past its (trimmed) end, the same keyset in Postgres."""

    def __init__(self, app: AppState) -> None:
        self.app = app

    def prefetch(self, after: Key | None, n: int) -> cf.Prefetch | None:
        return cf.Prefetch([cf.CommunityKeys(self.app.cache.keys).recent], after, n)

    def next_keys(self, after: Key | None, n: int) -> list[Key]:
        taken = self.take(after, n)
        rng = taken[0] if taken else None
        if rng is None:
            try:
                rng, outcome = cf.recent_after(self.app, after, n)
            except CacheUnavailable:
                self.outcome = "fallback"
                return _recent_pg(self.app, after, n)
            if outcome == "miss":
                self.outcome = "miss"
        keys = rng.entries or []
        if len(keys) < n and not rng.complete:
            keys += _recent_pg(self.app, keys[-1] if keys else after, n - len(keys))
        return keys


class FollowingSource(Source):
    """Fan-out on read: merge the followees' author sets (see cache/community_feed.py)."""

    def __init__(self, app: AppState, followee_ids: list[int]) -> None:
        self.app, self.authors = app, followee_ids

    def prefetch(self, after: Key | None, n: int) -> cf.Prefetch | None:
        if not self.authors:
            return None
        ck = cf.CommunityKeys(self.app.cache.keys)
        return cf.Prefetch([ck.author(a) for a in self.authors], after, n)

    def next_keys(self, after: Key | None, n: int) -> list[Key]:
        if not self.authors:
            return []
        app = self.app
        ranges = self.take(after, n)
        if ranges is None:
            try:
                ranges, outcome = cf.author_ranges(app, self.authors, after, n)
            except CacheUnavailable:
                self.outcome = "fallback"
                return _recent_pg(app, after, n, self.authors)
            if outcome == "miss":
                self.outcome = "miss"
        merged = sorted((k for r in ranges for k in r.entries or []), reverse=True)[:n]
        # An author set that was trimmed and ran out hides older posts below its last key.
        floor = max((r.entries[-1] if r.entries else after or (2**63, 0)
                     for r in ranges if not r.complete and len(r.entries or []) < n),
                    default=None)
        if floor is not None and (len(merged) < n or merged[-1] < floor):
            return _recent_pg(app, after, n, self.authors)
        return merged


class FilteredSource(Source):
    """A filtered ``recent`` or ``following`` walk, answered by a Postgres index
    (``posts.matching_keys``): the keys of the posts matching the filters that the viewer
    may see, newest first, in one keyset statement per chunk whatever the table's size
    (the sorted sets in Redis hold every post: walking them for a narrow filter read
    post after post). Outcome ``index``: no cache involved, Redis up or down alike.
    ``window``: examine at most that many of the newest posts after the cursor per call
    (a short answer then resumes at ``more``, the window's end)."""

    outcome = "index"
    exact = True

    def __init__(self, app: AppState, authors: list[int] | None, asset_type: str | None,
                 tags: list[str], viewer: int | None, vis: Visibility,
                 sparse: bool = False, window: int | None = None) -> None:
        self.app = app
        self.authors, self.asset_type, self.tags = authors, asset_type, tags
        self.viewer, self.vis, self.sparse, self.window = viewer, vis, sparse, window
        self.more = None

    def next_keys(self, after: Key | None, n: int) -> list[Key]:
        vis, self.more = self.vis, None
        colls = None if vis.sql is not None or vis.collectives is None else vis.collectives
        with self.app.db.read() as session:
            keys = posts.matching_keys(
                session, n, after, authors=self.authors, asset_type=self.asset_type,
                tags=self.tags, viewer_id=self.viewer,
                collectives=None if colls is None else sorted(colls), visible_to=vis.sql,
                sparse=self.sparse, window=self.window)
            if self.window is not None and len(keys) < n:
                self.more = posts.window_end(session, after, self.window)
        return keys


# AppState.hints: ranges of snapshot copies as pages read them, ``{(sid, after, n):
# KeyRange}``. A snapshot's copy never changes (an immutable ranking, written whole by a
# rename, restored from its row with the same entries), so a range read once stays its
# range: a page whose range this process remembers reads none, and its entities ride with
# its count (one round trip); whether the copy still exists is asked in that round trip,
# so an expired walk's cursor is still refused. Past RANGE_HINTS ranges it starts over
# (5.8 KB each at 42 keys, by sys.getsizeof: under 6 MB per process).
RANGE_HINT = "cf_snapshot_ranges"
RANGE_HINTS = 1024


class TrendingSource(Source):
    """One walk's ranking: its durable snapshot down to its floor, then its deep tail
    (see service/community_feed_trending.py)."""

    def __init__(self, app: AppState, sid: int, floor: cf.Floor, outcome: str = "hit"
                 ) -> None:
        self.app, self.sid, self.floor, self.outcome = app, sid, floor, outcome

    guessed = False

    @classmethod
    def start(cls, app: AppState) -> TrendingSource:
        source = cls(app, *trending.start_walk(app))
        app.hints[HINT] = (source.sid, source.floor)
        return source

    @classmethod
    def guess(cls, app: AppState) -> TrendingSource | None:
        """A new walk of the snapshot this process last saw shared (None: none seen);
        ``confirmed`` tells whether it is still the shared one."""
        hint = app.hints.get(HINT)
        if hint is None:
            return None
        source = cls(app, *hint)
        source.guessed = True
        return source

    def confirmed(self, page: cf.PageState | None) -> bool:
        """Whether this walk's snapshot is the shared one, as the pointer read with the
        page (``page``; None: Redis down) says; a walk not guessed always is."""
        return not self.guessed or (page is not None
                                    and page.pointer == (self.sid, self.floor))

    @classmethod
    def resume(cls, app: AppState, data: dict[str, Any]) -> TrendingSource:
        """The walk a decoded cursor names (its snapshot id ``s`` and floor ``fl``)."""
        floor = data.get("fl")
        return cls(app, data["s"], None if floor is None else (floor[0], floor[1]))

    def cursor_fields(self) -> dict[str, Any]:
        """What every cursor of this walk carries besides its key."""
        return {"s": self.sid, **({"fl": list(self.floor)} if self.floor else {})}

    def prefetch(self, after: Key | None, n: int) -> cf.Prefetch | None:
        if self.floor is not None and after is not None and after <= self.floor:
            return None  # past the snapshot's copy: its deep tail, in Postgres
        return cf.Prefetch([cf.CommunityKeys(self.app.cache.keys).snapshot(self.sid)],
                           after, n)

    def remembered(self, after: Key | None, n: int) -> cf.KeyRange | None:
        """The copy's range ``prefetch(after, n)`` would read, if this process read it
        before (``RANGE_HINT``); None otherwise, and past the copy (its deep tail)."""
        if self.floor is not None and after is not None and after <= self.floor:
            return None
        return self.app.hints.get(RANGE_HINT, {}).get((self.sid, after, n))

    def remember(self, after: Key | None, n: int, rng: cf.KeyRange) -> None:
        """Keep a range of the copy read after ``after`` (``n`` entries) for later pages."""
        if rng.entries is None:
            return
        ranges = self.app.hints.setdefault(RANGE_HINT, {})
        if len(ranges) >= RANGE_HINTS:
            ranges.clear()
        ranges[(self.sid, after, n)] = rng

    def exists_command(self) -> tuple[str, str]:
        """The command that tells whether the snapshot's copy is still in Redis."""
        return ("EXISTS", cf.CommunityKeys(self.app.cache.keys).snapshot(self.sid))

    def next_keys(self, after: Key | None, n: int) -> list[Key]:
        try:
            taken = self.take(after, n)
            keys, outcome = trending.walk_after(self.app, self.sid, self.floor, after, n,
                                                taken[0] if taken else None)
        except trending.UnknownSnapshot as exc:
            raise BadCursor() from exc
        if OUTCOME_RANK[outcome] > OUTCOME_RANK[self.outcome]:
            self.outcome = outcome
        return keys


# AppState.hints: each post's collective (None: public) as pages read it. A post never
# changes collective, so this only decides which entities a page need not read: a post
# known to be hidden from the viewer is not read, and the first read of a page stops at
# the posts it needs (``PostLoader.want``). Past POST_HINTS posts it starts over.
COLLECTIVE_HINT = "cf_post_collective"
UNKNOWN: Any = object()  # a post not in COLLECTIVE_HINT
POST_HINTS = 100_000


class PostLoader:
    """Loads a page's posts by id (``__call__``): from the post entities and the viewer's
    likes in Redis (``cache.posts``), less deleted posts, posts by authors the viewer
    blocked (``blocked``) and posts not matching the filters; with Redis down
    (``cached`` False) from Postgres in one statement that applies every rule, the
    viewer's collectives too when ``vis.sql`` says so. Remembers which posts the viewer
    likes (``liked``).

    From Redis it leaves out the posts it knows are hidden from the viewer (their
    collective, ``COLLECTIVE_HINT``), and with ``want`` set its next call reads the ids
    in order only until ``want`` of them are posts it knows the viewer sees; the rest
    are read (in a second round trip) only if fewer than ``want`` of those were found
    (deleted, blocked or filtered out). So a first chunk sized for hidden posts costs
    the entities of the page, not of the chunk."""

    want: int | None = None
    # ``(ids, raw replies of cache.posts.page_commands(ids))``, read already: used by the
    # read of exactly these ids (then dropped).
    ahead: tuple[list[int], Sequence[Any]] | None = None

    def __init__(self, app: AppState, viewer: int | None, vis: Visibility,
                 blocked: frozenset[int], asset_type: str | None, tags: Sequence[str],
                 cached: bool) -> None:
        self.app, self.viewer, self.vis, self.blocked = app, viewer, vis, blocked
        self.asset_type, self.tags, self.cached = asset_type, tags, cached
        self.liked: set[int] = set()

    def __call__(self, ids: Sequence[int]) -> dict[int, cache_posts.CachedPost]:
        if not self.cached:
            with self.app.db.read() as session:
                rows = posts.load_page(session, ids, self.viewer, self.asset_type, self.tags,
                                       self.vis.sql)
            self.liked.update(i for i, row in rows.items() if row.liked)
            return cache_posts.from_rows(rows)
        known = self.app.hints.setdefault(COLLECTIVE_HINT, {})
        sees, want, self.want = self.vis.sees, self.want, None
        wanted, rest = first_read(self.app, ids, sees, want)
        found = self._read(wanted, known)
        if rest and sum(1 for p in found.values() if sees(p.collective_id)) < want:
            found.update(self._read(rest, known))
        return found

    def _read(self, ids: list[int], known: dict[int, int | None]
              ) -> dict[int, cache_posts.CachedPost]:
        ahead, self.ahead = self.ahead, None
        replies = ahead[1] if ahead is not None and ahead[0] == ids else None
        found, liked = cache_posts.page_posts(self.app, ids, self.viewer, replies)
        self.liked |= liked
        if len(known) + len(found) > POST_HINTS:
            known.clear()
        known.update((i, p.collective_id) for i, p in found.items())
        return {i: p for i, p in found.items()
                if p.author_id not in self.blocked and p.matches(self.asset_type, self.tags)}


def first_read(app: AppState, ids: Sequence[int], sees: Callable[[int | None], bool],
               want: int | None) -> tuple[list[int], list[int]]:
    """Which of ``ids`` a ``PostLoader`` reads first, and which only if those held too few
    posts the viewer sees (``sees``): the ids not known to be hidden from the viewer
    (``COLLECTIVE_HINT``), and with ``want``, only up to the ``want``-th of them known to
    be seen."""
    known = app.hints.setdefault(COLLECTIVE_HINT, {})
    # ``sees`` only for posts known to be in a collective (most are public or unknown).
    wanted = [i for i in ids
              if (c := known.get(i, UNKNOWN)) is None or c is UNKNOWN or sees(c)]
    if want is not None:
        seen = 0
        for n, i in enumerate(wanted):
            seen += i in known
            if seen >= want:
                return wanted[:n + 1], wanted[n + 1:]
    return wanted, []


def first_chunk(source: Source, limit: int, filtered: bool, hidden: bool = False) -> int:
    """How many keys ``collect`` asks its source for first: ``limit + 1`` when each is a
    post of the page (an exact source, or no filter and a viewer who may see every post),
    twice that when some posts may be hidden from the viewer (a collective's posts: one
    read instead of two when up to half of them are), four times that for filters."""
    if source.exact:
        return limit + 1
    if filtered:
        return 4 * (limit + 1)
    return 2 * (limit + 1) if hidden else limit + 1


def collect(source: Source, after: Key | None, limit: int, vis: Visibility, filtered: bool,
            load: Callable[[Sequence[int]], Mapping[int, Any]], first: int | None = None
            ) -> tuple[list[tuple[Key, Any]], Key | None]:
    """Walk ``source`` after ``after`` until ``limit + 1`` posts the viewer may see are
    found, or ``SCAN_BUDGET`` keys were examined; ``load(ids)`` gives the live posts
    among ``ids`` that match the page's filters (``filtered``: there are some), each with
    its ``collective_id``; ``first``: the first chunk's size (default ``first_chunk``).
    Returns (page posts with their keys, the key to resume after, None if the walk
    reached its end)."""
    found: list[tuple[Key, Any]] = []
    chunk = first or first_chunk(source, limit, filtered)
    cursor, scanned = after, 0
    while True:
        keys = source.next_keys(cursor, chunk)
        if keys:
            rows = load([k[-1] for k in keys])
            found += [(k, rows[k[-1]]) for k in keys
                      if k[-1] in rows and vis.sees(rows[k[-1]].collective_id)]
            scanned += len(keys)
        if len(found) > limit:
            return found[:limit], found[limit - 1][0]
        if len(keys) < chunk:  # the end, or of the source's own window (``more``)
            return found, source.more
        cursor = keys[-1]
        if scanned >= SCAN_BUDGET:
            return found, cursor
        chunk = min(chunk * 2, 1000, SCAN_BUDGET - scanned)
