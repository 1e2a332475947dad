"""Use cases of the personalized ranked feed (API.md section 4), as plain functions of
their dependencies (``AppState``): the HTTP routes (``service.ranked_feed``), the jobs and
the operator's check / rebuild / warm call them; none needs a Flask context.

A ranking: the viewer's inputs (fellows, collectives, interaction counts, preferences:
cached per calc version, ``cache.ranked_feed``; on a miss all four come from one
statement, ``storage.ranked_feed.load_inputs``), one lean query for the bounded candidate
set (``storage.ranked_feed.load_candidates``: only the score's columns, the viewed flag
included, packed in one bytea that numpy reads as it is, one round trip), then numpy
scoring (``service.ranked_feed_score``). A page's ranking and its post rows share one session
(one pool checkout). The first ``RANKED_CACHE_ENTRIES`` entries are cached (ids, scores,
components: 32 bytes each); a walk past them ranks again at the cached ranking's clock,
less the entries already shown.

The walk is bounded: ``count`` is the candidate set's size, at most
``RANKED_CANDIDATES_RECENT + 2 · RANKED_CANDIDATES_SOCIAL`` posts (1,000 by default); the
page holding its last entry has ``next: null``, and a page past it answers an empty
``results`` (never a 404: a ranking recomputed between pages may have shrunk).
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import numpy as np

from cache import community_feed as cf
from cache import posts as cache_posts
from cache import ranked_feed as feed_cache
from cache.entities import EntityStore, encode
from cache.fill import Filler
from cache.ranked_feed import Controls, Entry, RankedFeedCache, RankedPage, Ranking
from service import community_feed_ops
from service import ranked_feed_score as scoring
from service.bootstrap import AppState
from service.errors import ApiError, NotFound
from storage import posts as posts_store
from storage import ranked_feed as store
from storage import rebuild as rebuild_store
from storage.posts import PostRow
from storage.profiles import author_json

DECISION_LOG_TOP = 10  # posts per sampled ranking-decision log line
decisions = logging.getLogger("service.ranking")


def now() -> datetime:
    """The ranking clock of jobs (the routes pass theirs; tests freeze both)."""
    return datetime.now(UTC)


def cache_of(app_state: AppState) -> RankedFeedCache:
    s = app_state.settings
    return RankedFeedCache(
        app_state.cache, app_state.filler, s.page_cache_ttl,
        {"fellows": s.fellows_ttl, "colls": s.collectives_ttl,
         "stats": s.interaction_stats_ttl, "prefs": s.fellows_ttl},
        keep=s.ranked_cache_entries,
    )


def stats_json(user_stats: tuple[dict[int, int], dict[str, int]]) -> dict[str, Any]:
    """The cached form of the viewer's interaction counts (input ``stats``)."""
    by_author, by_type = user_stats
    return {"a": sorted(by_author.items()), "t": by_type}


def load_inputs(session: Any, user_id: int) -> dict[str, Any]:
    """The viewer's inputs from Postgres (one statement), by cached name, as JSON-able
    values."""
    got = store.load_inputs(session, user_id)
    return {"fellows": got.fellows, "colls": got.collectives,
            "stats": stats_json((got.by_author, got.by_type)),
            "prefs": got.preferences.as_dict()}


# --- ranking -------------------------------------------------------------------------------


def load_controls(app_state: AppState) -> Controls:
    """The ranking controls from Postgres (the truth)."""
    with app_state.db.read() as session:
        stored = store.load_ranking_controls(session, feed_cache.config_scope().row_name)
    return Controls(stored.version, stored.enabled, stored.weights)


def weights_of(app_state: AppState, controls: Controls) -> dict[str, float]:
    """``RANKING_WEIGHTS`` with the admin's weights over it."""
    return {**app_state.settings.ranking_weights, **controls.weights}


def compute_ranking(app_state: AppState, user_id: int, version: int | None,
                    weights: dict[str, float] | None = None, is_admin: bool = False,
                    clock_us: int | None = None,
                    exclude: np.ndarray | None = None, session: Any = None,
                    cached_inputs: feed_cache.InputsRead | None = None) -> Ranking:
    """Rank the viewer's candidates (less the posts ``exclude``) at ``clock_us`` (default
    now) with ``weights`` (default ``RANKING_WEIGHTS``); inputs from the cache at
    ``version`` (straight from Postgres when ``version`` is None; ``cached_inputs``: a
    fill's read of them, ``RankedFeedCache.inputs``). Candidates are the
    posts the viewer may see: public ones and their collectives' (every post for an
    admin). ``session``: the caller's (default: a session of its own)."""
    if session is None:
        with app_state.db.read() as own:
            return compute_ranking(app_state, user_id, version, weights, is_admin,
                                   clock_us, exclude, own, cached_inputs)
    settings = app_state.settings
    clock = feed_cache.now_us(now()) if clock_us is None else clock_us
    if version is None:
        inputs = load_inputs(session, user_id)
    else:
        inputs = cache_of(app_state).inputs(user_id, version,
                                            lambda: load_inputs(session, user_id),
                                            cached_inputs)
    prefs = inputs["prefs"]
    viewer = scoring.ViewerInputs(
        fellows=frozenset(inputs["fellows"]),
        collectives=frozenset(inputs["colls"]),
        by_author={int(a): int(n) for a, n in inputs["stats"]["a"]},
        by_type={str(t): int(n) for t, n in inputs["stats"]["t"].items()},
        preferred_types=frozenset(prefs["preferred_post_types"]),
    )
    records = store.load_candidates(
        session, viewer=user_id, fellows=inputs["fellows"], collectives=inputs["colls"],
        blocked=prefs["blocked_users"], muted=prefs["muted_collectives"],
        type_values=scoring.post_type_values(viewer),
        k_recent=settings.ranked_candidates_recent,
        k_social=settings.ranked_candidates_social, is_admin=is_admin,
    )
    candidates = scoring.Candidates.from_records(records)
    if exclude is not None and len(exclude):
        candidates = candidates.without(exclude)
    ranked = scoring.rank(candidates, viewer, weights or settings.ranking_weights, clock)
    return Ranking(clock, feed_cache.pack(ranked.ids, ranked.components, ranked.viewed))


def ranked_page(app_state: AppState, user_id: int, start: int, stop: int,
                force: bool = False, is_admin: bool = False,
                clock: datetime | None = None,
                session: Any = None) -> tuple[Controls, RankedPage | None]:
    """The ranking controls and entries ``[start, stop)`` of the viewer's ranking under
    them (None when the admin switched ranking off); an admin's ranking (every collective)
    is kept apart. Warm: one round trip reads the versions and the page; ``force``: the
    versions, the fill's lease and the inputs, then the publish with the page's posts. A
    ranking (and
    a calc version whose Redis copy is missing) is read on ``session`` when given (one
    connection for the whole request)."""
    cache = cache_of(app_state)
    row = feed_cache.scope(user_id).row_name
    first = cache.first_read(
        user_id, start, stop, is_admin, lambda: load_controls(app_state),
        None if session is None else lambda: rebuild_store.versions(session, [row])[row],
        force=force)
    controls = first.controls
    if not controls.enabled:
        cache.release(first)
        return controls, None
    weights = weights_of(app_state, controls)

    def compute(v: int | None, clock_us: int, exclude: np.ndarray | None,
                cached_inputs: feed_cache.InputsRead | None) -> Ranking:
        return compute_ranking(app_state, user_id, v, weights, is_admin, clock_us, exclude,
                               session, cached_inputs)

    def score(parts: np.ndarray, viewed: np.ndarray) -> np.ndarray:
        return scoring.scores(parts, viewed, weights)

    return controls, cache.page(
        user_id, first, start, stop, compute, score,
        feed_cache.now_us(clock or now()), force=force, admin=is_admin,
    )


# --- pages ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class FeedPage:
    """One page: the walk's size, and its posts (``cache.posts.CachedPost``: their
    rendered bytes) with their ranked entry (None when chronological)."""

    count: int
    posts: list[tuple[cache_posts.CachedPost, Entry | None]]
    personalized: bool


def _from_row(row: dict[str, Any]) -> cache_posts.CachedPost:
    """A ``storage.ranked_feed`` row rendered as its post entity would be."""
    author = author_json(row["author_id"], row["author_display_name"],
                         row["author_avatar_url"], row["author_tier"])
    return cache_posts.CachedPost.of(row["id"], encode(cache_posts.render(
        PostRow(SimpleNamespace(**row), author, False))))  # type: ignore[arg-type]


def _log_decision(app_state: AppState, user_id: int, page: int, page_size: int,
                  count: int, controls: Controls,
                  shown: Sequence[tuple[cache_posts.CachedPost, Entry | None]]) -> None:
    """One JSON line: the viewer, the page and its top posts with their components."""
    top = [{"id": post.id, "score": entry.score,
            "components": dict(zip(scoring.COMPONENTS, entry.components, strict=True)),
            "viewed": entry.viewed}
           for post, entry in shown[:DECISION_LOG_TOP] if entry is not None]
    decisions.info(json.dumps({
        "event": "ranking_decision", "viewer": user_id, "page": page,
        "page_size": page_size, "count": count, "config_version": controls.version,
        "weights": weights_of(app_state, controls), "top": top,
    }))


def _load_posts(session: Any, ids: list[int]) -> dict[int, dict[str, bytes]]:
    """The live posts among ``ids`` rendered as their entities (``cache.posts.render``)."""
    return {i: cache_posts.render(row)
            for i, row in posts_store.post_entities(session, ids).items()}


def _page_posts(app_state: AppState, ranked: RankedPage,
                session: Any) -> dict[int, cache_posts.CachedPost]:
    """The page's live posts: from the entities a fill read in its publish round trip
    (those missing filled in one batch, their rows and any lost version copies read on
    ``session``, the ranking's), else ``cache.posts.page_posts`` (one round trip)."""
    if ranked.posts is None:
        return cache_posts.page_posts(app_state, [e.id for e in ranked.entries], None)[0]
    wanted, replies = ranked.posts
    filler = Filler(app_state.cache,
                    lambda name: rebuild_store.versions(session, [name])[name],
                    lambda names: rebuild_store.versions(session, names))
    found = EntityStore(filler, cache_posts.PATH).complete(
        wanted, replies, lambda ids: _load_posts(session, ids))
    return {i: cache_posts.CachedPost.of(i, fields) for i, fields in found.items()}


def personalized_page(app_state: AppState, user_id: int, page: int, page_size: int,
                      force: bool = False, is_admin: bool = False,
                      clock: datetime | None = None) -> FeedPage:
    """The viewer's personalized page ``page`` (chronological when ranking is off).

    The posts are their cached entities (``cache.posts``: read in the ranking fill's
    publish round trip, else one pipeline; a batched fill of the missing ones; Redis down:
    one statement): posts deleted since the ranking was
    cached are left out (a delete drops the entity, a fill finds no live row). Blocks,
    mutes, joins and leaves move the viewer's calc version in their transaction, so a
    ranking cached before them is not read again once their change is applied (right
    after commit; after a crash, by the outbox relay)."""
    start = (page - 1) * page_size
    # One read session for the ranking and the page's missing posts (one pool checkout);
    # a connection only once a statement runs (a warm page has none).
    with app_state.db.read() as session:
        controls, ranked = ranked_page(app_state, user_id, start, start + page_size,
                                       force=force, is_admin=is_admin, clock=clock,
                                       session=session)
        if ranked is None:
            session.close()
            return chronological_page(app_state, user_id, page, page_size, is_admin)
        found = _page_posts(app_state, ranked, session)
    shown = [(found[e.id], e) for e in ranked.entries if e.id in found]
    sample = app_state.settings.ranking_log_sample
    if sample > 0 and random.random() < sample:  # noqa: S311 - sampling, not security
        _log_decision(app_state, user_id, page, page_size, ranked.count, controls, shown)
    return FeedPage(ranked.count, shown, True)


def chronological_page(app_state: AppState, user_id: int | None, page: int,
                       page_size: int, is_admin: bool = False) -> FeedPage:
    """Newest first: every post the caller may see (anonymous: public ones)."""
    with app_state.db.read() as session:
        count, rows = store.chronological_page(session, user_id, (page - 1) * page_size,
                                               page_size, is_admin)
    return FeedPage(count, [(_from_row(row), None) for row in rows], False)


# --- the viewer's writes -------------------------------------------------------------------


def _add_fact(app_state: AppState, user_id: int, post_id: int, is_admin: bool,
              add: Callable[..., Any], counter: str) -> bool:
    """Add the viewer's fact (``add``: praise or trophy) and, if new, count it in the
    post's cached entity (``counter``), its version bumped in the counter's statement."""
    name = cache_posts.scope(post_id).row_name
    with app_state.uow() as uow:
        if not store.post_is_visible(uow.session, post_id, user_id, is_admin):
            raise NotFound("Post not found")
        added = add(uow.session, user_id, post_id, [name])
        if added.changed:
            feed_cache.touch(uow, user_id)
            if name in added.versions:
                keys = app_state.cache.keys
                cache_posts.on_counts(
                    cache_posts.adopt(uow, keys, post_id, added.versions[name]), keys,
                    post_id, **{counter: added.count})
        uow.commit()
    return added.changed


def praise(app_state: AppState, user_id: int, post_id: int, is_admin: bool = False) -> bool:
    """Praise a post the viewer may see (once); True if new. The viewer's calc version
    moves in the same transaction. Raises ``NotFound``."""
    return _add_fact(app_state, user_id, post_id, is_admin, store.add_praise,
                     "praise_count")


def trophy(app_state: AppState, user_id: int, post_id: int, is_admin: bool = False) -> bool:
    """Give a post the viewer may see a trophy (once); as ``praise``."""
    return _add_fact(app_state, user_id, post_id, is_admin, store.add_trophy,
                     "trophy_count")


def set_fellow(app_state: AppState, me: int, other: int, fellow: bool) -> bool:
    """Fellowship is mutual: both rows, both users' calc versions (in id order)."""
    if me == other:
        raise ApiError("You cannot be your own fellow", code="self_fellow")
    with app_state.uow() as uow:
        write = store.add_fellow if fellow else store.remove_fellow
        changed = write(uow.session, me, other)
        if changed:
            for user_id in sorted((me, other)):  # one lock order: no deadlocks
                feed_cache.touch(uow, user_id)
        uow.commit()
    return changed


def heart(app_state: AppState, user_id: int, post_id: int, hearted: bool,
          is_admin: bool = False) -> bool:
    """A heart is a community like: ``community_feed_ops.like_post`` writes it and bumps
    the viewer's calc version in the same transaction when it changed; True if this call
    changed it (raises ``NotFound``)."""
    return community_feed_ops.like_post(app_state, user_id, post_id, hearted, is_admin)


def set_member(app_state: AppState, user_id: int, collective_id: int, member: bool) -> bool:
    """Join or leave; the community feed's cache change (the user's cached collectives)
    is queued in the same unit of work. Raises ``NotFound`` for an unknown collective."""
    with app_state.uow() as uow:
        if not store.collective_exists(uow.session, collective_id):
            raise NotFound("Collective not found")
        write = store.join_collective if member else store.leave_collective
        changed = write(uow.session, user_id, collective_id)
        if changed:
            feed_cache.touch(uow, user_id)
            community_feed_ops.set_membership(app_state, uow, user_id, collective_id, member)
        uow.commit()
    return changed


def get_preferences(app_state: AppState, user_id: int) -> store.Preferences:
    with app_state.db.read() as session:
        return store.load_preferences(session, user_id)


def save_preferences(app_state: AppState, user_id: int,
                     body: dict[str, list]) -> store.Preferences:
    """Replace the given lists (deduplicated, sorted; others kept). Raises ``ApiError``
    for a self-block or unknown collectives."""
    changes = {name: sorted(set(values)) for name, values in body.items()}
    if user_id in changes.get("blocked_users", []):
        raise ApiError("Invalid request", code="validation_error",
                       details={"blocked_users": ["You cannot block yourself."]})
    with app_state.uow() as uow:
        unknown = store.unknown_collectives(uow.session, changes.get("muted_collectives", []))
        if unknown:
            raise ApiError("Invalid request", code="validation_error", details={
                "muted_collectives": [f"Unknown collective ids: {unknown}"]})
        saved = store.save_preferences(uow.session, user_id, changes)
        feed_cache.touch(uow, user_id)
        if "blocked_users" in changes:  # the community feed's cached blocked set
            cf.blocked_changed(uow.change(cf.blocked_scope(user_id)),
                               cf.CommunityKeys(app_state.cache.keys), user_id)
        uow.commit()
    return saved


# --- the admin's ranking controls -----------------------------------------------------------


def controls_out(app_state: AppState, controls: Controls) -> dict[str, Any]:
    return {"enabled": controls.enabled, "weights": weights_of(app_state, controls)}


def save_controls(app_state: AppState, enabled: bool | None,
                  weights: dict[str, float]) -> Controls:
    """Store ``enabled`` and/or some weights (others kept); every process ranks with
    them from its next page (the controls' version moves in the same transaction)."""
    if enabled is None and not weights:
        return load_controls(app_state)
    with app_state.uow() as uow:
        stored_enabled, stored_weights = store.save_ranking_controls(
            uow.session, enabled, weights)
        feed_cache.controls_changed(uow, app_state.cache.keys)
        uow.commit()
    return Controls(0, stored_enabled, stored_weights)


# --- the operator's check / rebuild / warm of one user --------------------------------------


def check_user(app_state: AppState, user_id: int) -> list[tuple[str, Any, Any]]:
    """``(key, cached, Postgres)`` for each of the user's cached inputs that differs from
    Postgres (only when their calc version is settled), and for a malformed ranking."""
    row = feed_cache.scope(user_id).row_name

    def version() -> int:
        with app_state.db.read() as session:
            return rebuild_store.versions(session, [row])[row]

    def truth() -> dict[str, Any]:
        with app_state.db.read() as session:
            return load_inputs(session, user_id)

    return feed_cache.check(app_state.cache, user_id, truth, version)


def rebuild_user(app_state: AppState, user_id: int, path: str = "rebuild") -> None:
    """Refill the user's inputs and ranking, version-checked, cached or not."""
    cache_of(app_state).rebuild(user_id, path, lambda: ranked_page(
        app_state, user_id, 0, 1, force=True))


def warm_user(app_state: AppState, user_id: int) -> None:
    """Read through the user's first page and its posts, so their next read is a hit."""

    def first_page() -> Any:
        _, ranked = ranked_page(app_state, user_id, 0, WARM_POSTS)
        if ranked is not None:
            cache_posts.page_posts(app_state, [e.id for e in ranked.entries], None)

    cache_of(app_state).warm(first_page)


WARM_POSTS = 50  # entries (and posts) of a warmed ranking's first page
