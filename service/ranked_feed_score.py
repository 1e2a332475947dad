"""The personalized feed's score (API.md section 4), as pure functions over numpy columns:
no I/O, and no Python work per candidate (one vector operation per component).

    score = Σ weight[k] · component[k]  (× VIEWED_FACTOR if the viewer already viewed it)

Components, for one viewer and one post:

- ``recency``      100 · e^(−hours/24), hours since the post was created (≥ 0)
- ``social``       50 if the author is one of the viewer's fellows
- ``interaction``  min(5 · n, 40), n = the viewer's hearts + praise + trophies on posts by
                   that author (every such fact, on live or deleted posts)
- ``engagement``   min(hearts + 2 · praise + 5 · trophies + 0.5 · comments, 50), kept on
                   the post row (``posts.engagement``, migration 0008)
- ``collective``   30 if the post is in a collective the viewer joined
- ``post_type``    10 · n_t if the post's type t is among the viewer's top 3 types by
                   interactions (n_t > 0; ties broken by type name); a type listed in the
                   viewer's ``preferred_post_types`` scores at least 10

Weights come from ``Settings.ranking_weights`` (with an admin's weights over them, see
``service.ranked_feed_ops``). Already-viewed posts (a ``post_views`` row) rank lower: their
score is multiplied by ``VIEWED_FACTOR`` (0.5), so a viewed post stays in the feed but
drops below unviewed posts of similar score. Order: score descending, then newest first,
then id descending (a total order, so pages are stable).

The sum is taken left to right in ``COMPONENTS`` order, as a plain loop would, so a score
equals the formula's to the last bit but for ``exp`` (numpy's may differ from libm's in
the last place).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

COMPONENTS = ("recency", "social", "interaction", "engagement", "collective", "post_type")
VIEWED_FACTOR = 0.5
TOP_POST_TYPES = 3
NO_COLLECTIVE = 0  # ``Candidates.collective_ids`` of a public post (ids start at 1)


@dataclass(frozen=True)
class Candidates:
    """The facts the score depends on, one numpy column per fact, one row per post."""

    ids: np.ndarray  # int64
    author_ids: np.ndarray  # int64
    collective_ids: np.ndarray  # int64, NO_COLLECTIVE for a public post
    created_us: np.ndarray  # int64, microseconds since the epoch
    engagement: np.ndarray  # float64, the engagement component
    viewed: np.ndarray  # bool, the viewer has a post_views row
    post_type: np.ndarray  # float64, the post_type component (``post_type_values``)

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def from_rows(cls, rows: Sequence[Sequence[Any]]) -> Candidates:
        """From ``(id, author_id, collective_id or 0, created_us, engagement, viewed,
        post_type component)`` tuples (``storage.ranked_feed.load_candidates``), a post
        found by two sources twice (its copies are equal): one conversion of the whole
        list, value by value without inspecting each tuple as a sequence (every value is
        exact in a float64: ids and microseconds are below 2^53), then one row per post,
        in id order."""
        table = np.fromiter(itertools.chain.from_iterable(rows), dtype=np.float64,
                            count=7 * len(rows)).reshape(len(rows), 7)
        _, first = np.unique(table[:, 0], return_index=True)
        table = table[first]
        ints = table[:, :4].astype(np.int64)
        return cls(ids=ints[:, 0], author_ids=ints[:, 1], collective_ids=ints[:, 2],
                   created_us=ints[:, 3], engagement=table[:, 4],
                   viewed=table[:, 5] != 0, post_type=table[:, 6])

    @classmethod
    def from_records(cls, records: np.ndarray) -> Candidates:
        """From a structured array with the fields of ``from_rows``'s tuples by name
        (``storage.ranked_feed.CANDIDATE_ROW``), a post found by two sources twice: one
        row per post, in id order, each column one vector conversion."""
        _, first = np.unique(records["id"], return_index=True)
        records = records[first]
        return cls(ids=records["id"].astype(np.int64),
                   author_ids=records["author_id"].astype(np.int64),
                   collective_ids=records["collective_id"].astype(np.int64),
                   created_us=records["created_us"].astype(np.int64),
                   engagement=records["engagement"].astype(np.float64),
                   viewed=records["viewed"].astype(bool),
                   post_type=records["post_type"].astype(np.float64))

    def without(self, ids: np.ndarray) -> Candidates:
        """These candidates less the posts ``ids``."""
        keep = ~np.isin(self.ids, ids)
        return Candidates(*(getattr(self, f)[keep] for f in _FIELDS))


_FIELDS = ("ids", "author_ids", "collective_ids", "created_us", "engagement", "viewed",
           "post_type")


@dataclass(frozen=True)
class ViewerInputs:
    """The per-viewer facts: the cached inputs plus preferences."""

    fellows: frozenset[int] = frozenset()
    collectives: frozenset[int] = frozenset()
    by_author: Mapping[int, int] = field(default_factory=dict)  # interactions per author
    by_type: Mapping[str, int] = field(default_factory=dict)  # interactions per post type
    preferred_types: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Ranked:
    """One ranked post: its final score and the raw components behind it."""

    id: int
    score: float
    components: tuple[float, ...]  # in COMPONENTS order
    viewed: bool

    def explain(self) -> dict[str, float | bool]:
        out: dict[str, float | bool] = dict(zip(COMPONENTS, self.components, strict=True))
        out["viewed"] = self.viewed
        out["viewed_factor"] = VIEWED_FACTOR if self.viewed else 1.0
        return out


@dataclass(frozen=True)
class Ranking:
    """Candidates best first: ids, final scores, components (one column per name in
    ``COMPONENTS``) and viewed flags, as numpy arrays of one length."""

    ids: np.ndarray  # int64
    scores: np.ndarray  # float64
    components: np.ndarray  # float64, shape (n, 6)
    viewed: np.ndarray  # bool

    def __len__(self) -> int:
        return len(self.ids)


def top_types(by_type: Mapping[str, int]) -> dict[str, int]:
    """The viewer's top 3 post types by interactions (n > 0), ties broken by name."""
    ranked = sorted((item for item in by_type.items() if item[1] > 0),
                    key=lambda item: (-item[1], item[0]))
    return dict(ranked[:TOP_POST_TYPES])


def post_type_values(viewer: ViewerInputs) -> dict[str, float]:
    """The post_type component per post type (types absent score 0): 10 · n_t for the
    viewer's top 3 types, at least 10 for a preferred type. Looked up per candidate where
    the candidates are read (``Candidates.post_type``)."""
    top = top_types(viewer.by_type)
    values = {t: 10.0 * n for t, n in top.items()}
    for t in viewer.preferred_types:
        values[t] = max(values.get(t, 0.0), 10.0)
    return values


def _ids(values: frozenset[int]) -> np.ndarray:
    return np.fromiter(values, dtype=np.int64, count=len(values))


def components(c: Candidates, viewer: ViewerInputs, now_us: int) -> np.ndarray:
    """The (n, 6) matrix of raw components, columns in ``COMPONENTS`` order."""
    n = len(c)
    out = np.zeros((n, len(COMPONENTS)), dtype=np.float64)
    if n == 0:
        return out
    # Microseconds are exact in int64; one division, as timedelta.total_seconds() does.
    hours = np.maximum((now_us - c.created_us).astype(np.float64) / 1e6 / 3600.0, 0.0)
    out[:, 0] = 100.0 * np.exp(-hours / 24.0)
    out[:, 1] = np.where(np.isin(c.author_ids, _ids(viewer.fellows)), 50.0, 0.0)
    if viewer.by_author:
        authors = np.fromiter(viewer.by_author.keys(), dtype=np.int64,
                              count=len(viewer.by_author))
        counts = np.fromiter(viewer.by_author.values(), dtype=np.int64,
                             count=len(viewer.by_author))
        order = np.argsort(authors)
        authors, counts = authors[order], counts[order]
        at = np.minimum(np.searchsorted(authors, c.author_ids), len(authors) - 1)
        n_author = np.where(authors[at] == c.author_ids, counts[at], 0)
        out[:, 2] = np.minimum(5 * n_author, 40).astype(np.float64)
    out[:, 3] = c.engagement
    joined = (c.collective_ids != NO_COLLECTIVE) & np.isin(c.collective_ids,
                                                           _ids(viewer.collectives))
    out[:, 4] = np.where(joined, 30.0, 0.0)
    out[:, 5] = c.post_type
    return out


def scores(parts: np.ndarray, viewed: np.ndarray,
           weights: Mapping[str, float]) -> np.ndarray:
    """The final scores of rows of components (``components``'s columns) and viewed
    flags: a function of those alone, so the same rows give the same bits wherever it
    runs (a cached ranking keeps the components, not the scores)."""
    score = np.zeros(len(parts), dtype=np.float64)
    for k, name in enumerate(COMPONENTS):  # left to right, like the formula's sum
        score = score + float(weights[name]) * parts[:, k]
    return np.where(viewed, score * VIEWED_FACTOR, score)


def rank(c: Candidates, viewer: ViewerInputs, weights: Mapping[str, float],
         now_us: int) -> Ranking:
    """Score every candidate and return them best first (a total, stable order)."""
    parts = components(c, viewer, now_us)
    score = scores(parts, c.viewed, weights)
    order = np.lexsort((-c.ids, -c.created_us, -score))
    return Ranking(c.ids[order], score[order], parts[order], c.viewed[order])
