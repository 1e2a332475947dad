"""The personalized feed's score (API.md section 4), as pure functions: no I/O.

    score = Σ weight[k] · component[k]  (× VIEWED_FACTOR if the viewer already viewed it)

Components, for one viewer and one post:

- ``recency``      100 · e^(−hours/24), hours since the post was created (≥ 0)
- ``social``       50 if the author is one of the viewer's fellows
- ``interaction``  min(5 · n, 40), n = the viewer's hearts + praise + trophies on posts by
                   that author (every such fact, on live or deleted posts)
- ``engagement``   min(hearts + 2 · praise + 5 · trophies + 0.5 · comments, 50)
- ``collective``   30 if the post is in a collective the viewer joined
- ``post_type``    10 · n_t if the post's type t is among the viewer's top 3 types by
                   interactions (n_t > 0; ties broken by type name); a type listed in the
                   viewer's ``preferred_post_types`` scores at least 10

Weights come from ``Settings.ranking_weights`` (with an admin's weights over them, see
``service.ranked_feed``). Already-viewed posts (a ``post_views`` row)
rank lower: their score is multiplied by ``VIEWED_FACTOR`` (0.5), so a viewed post stays
in the feed but drops below unviewed posts of similar score. Order: score descending, then
newest first, then id descending (a total order, so pages are stable).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

COMPONENTS = ("recency", "social", "interaction", "engagement", "collective", "post_type")
VIEWED_FACTOR = 0.5
TOP_POST_TYPES = 3


@dataclass(frozen=True)
class Candidate:
    """The facts about one post that its score depends on."""

    id: int
    author_id: int
    post_type: str
    collective_id: int | None
    created_at: datetime
    like_count: int
    praise_count: int
    trophy_count: int
    comment_count: int


@dataclass(frozen=True)
class ViewerInputs:
    """The per-viewer facts: the cached inputs plus preferences and viewed posts."""

    fellows: frozenset[int] = frozenset()
    collectives: frozenset[int] = frozenset()
    by_author: Mapping[int, int] = field(default_factory=dict)  # interactions per author
    by_type: Mapping[str, int] = field(default_factory=dict)  # interactions per post type
    preferred_types: frozenset[str] = frozenset()
    viewed: frozenset[int] = frozenset()


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


def top_types(by_type: Mapping[str, int]) -> dict[str, int]:
    """The viewer's top 3 post types by interactions (n > 0), ties broken by name."""
    ranked = sorted((item for item in by_type.items() if item[1] > 0),
                    key=lambda item: (-item[1], item[0]))
    return dict(ranked[:TOP_POST_TYPES])


def components(post: Candidate, viewer: ViewerInputs, now: datetime,
               top: Mapping[str, int]) -> tuple[float, ...]:
    hours = max((now - post.created_at).total_seconds() / 3600.0, 0.0)
    recency = 100.0 * math.exp(-hours / 24.0)
    social = 50.0 if post.author_id in viewer.fellows else 0.0
    interaction = float(min(5 * viewer.by_author.get(post.author_id, 0), 40))
    engagement = min(
        post.like_count + 2 * post.praise_count + 5 * post.trophy_count
        + 0.5 * post.comment_count,
        50.0,
    )
    collective = (
        30.0 if post.collective_id is not None and post.collective_id in viewer.collectives
        else 0.0
    )
    post_type = 10.0 * top.get(post.post_type, 0)
    if post.post_type in viewer.preferred_types:
        post_type = max(post_type, 10.0)
    return (recency, social, interaction, float(engagement), collective, post_type)


def rank(candidates: Iterable[Candidate], viewer: ViewerInputs,
         weights: Mapping[str, float], now: datetime) -> list[Ranked]:
    """Score every candidate and return them best first (a total, stable order)."""
    top = top_types(viewer.by_type)
    w = [float(weights[name]) for name in COMPONENTS]
    scored: list[tuple[Ranked, float]] = []
    for post in candidates:
        parts = components(post, viewer, now, top)
        score = 0.0
        for weight, part in zip(w, parts, strict=True):
            score += weight * part
        viewed = post.id in viewer.viewed
        if viewed:
            score *= VIEWED_FACTOR
        scored.append((Ranked(post.id, score, parts, viewed), post.created_at.timestamp()))
    scored.sort(key=lambda item: (-item[0].score, -item[1], -item[0].id))
    return [item[0] for item in scored]
