"""The read paths as operators see them: each name is a read path's name in every layer,
and each path's ``check`` / ``rebuild`` / ``warm`` is its own ``cache/<path>.py``'s (see
``cache/checks.py`` for what they promise). The rebuild, reconcile and warm jobs and the
CLI find them here.

=================  ============================================================================
path               per-user state
=================  ============================================================================
group_feed         groups set, read state per group, and the live bitmap of each of the
                   user's groups (the group feed also checks and rebuilds per group)
activity_feed      counters, recent list, first pages
community_feed     followees, collectives and the user's own author set
ranked_feed        personalized inputs and ranking
recent_reels       recently viewed list
=================  ============================================================================
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import orjson
from flask import Flask, current_app, has_app_context

from cache import activity_feed, checks, community_feed, group_feed, ranked_feed, recent_reels
from cache.checks import Difference
from service import ranked_feed as ranked_service
from service.bootstrap import AppState
from storage import ranked_feed as rf_store
from storage import rebuild as store

__all__ = ["READ_PATHS", "Difference", "ReadPath", "get", "group_ids"]


@dataclass(frozen=True)
class ReadPath:
    name: str
    check: Callable[[AppState, int], list[Difference]]
    rebuild: Callable[[AppState, int], None]
    warm: Callable[[AppState, int], None]
    check_group: Callable[[AppState, int], list[Difference]] | None = None
    rebuild_group: Callable[[AppState, int], None] | None = None

    def users(self, state: AppState, after: int = 0, batch: int = 500) -> Iterator[int]:
        """Every user id with data for this path above ``after``, ascending, streamed."""
        while True:
            with state.db.session() as session:
                ids = store.user_ids(session, self.name, after, batch)
            yield from ids
            if len(ids) < batch:
                return
            after = ids[-1]


# --- the personalized ranking (its use case computes the ranking) ---------------------------


def _json(value: Any) -> Any:
    return orjson.loads(orjson.dumps(value))


def _stats_json(session: Any, user_id: int) -> Any:
    return _json(ranked_service.stats_json(rf_store.load_interaction_stats(session, user_id)))


INPUT_LOADERS: dict[str, Callable[[Any, int], Any]] = {
    "fellows": rf_store.load_fellows,
    "colls": rf_store.load_collectives,
    "stats": _stats_json,
}


def ranked_check(state: AppState, user_id: int) -> list[Difference]:
    keys = state.cache.keys
    calc = ranked_feed.scope(user_id)
    head = checks.peek(state.cache, [("get", keys.version(calc)),
                                     ("get", ranked_feed.config_key(keys))])
    calc_copy = checks.version_copy(head[0])
    # The ranking is keyed by the controls' version too: without their copy, no page of
    # the current controls can be read either, so only the inputs are checked.
    controls_copy = (ranked_feed.Controls.decode(head[1][1]).version
                     if head[1][0] and head[1][1] is not None else None)
    if calc_copy is None:
        return []
    ranked = checks.peek(state.cache, [
        *[("get", ranked_feed.input_key(keys, user_id, n, calc_copy))
          for n in ranked_feed.INPUT_NAMES],
        *([("lrange", ranked_feed.rank_key(keys, user_id, calc_copy, controls_copy))]
          if controls_copy is not None else []),
    ])
    before = checks.versions(state, [calc])
    with state.db.session() as session:
        inputs = {n: _json(INPUT_LOADERS[n](session, user_id)) for n in ranked_feed.INPUT_NAMES}
    after = checks.versions(state, [calc])
    out: list[Difference] = []
    who = {"user_id": user_id}
    if not checks.settled(calc_copy, before, after, calc):
        return out
    for name, (exists, raw) in zip(ranked_feed.INPUT_NAMES, ranked, strict=False):
        if exists:
            out += checks.differs("ranked_feed",
                                  ranked_feed.input_key(keys, user_id, name, calc_copy),
                                  orjson.loads(raw), inputs[name], **who)
    exists, raw = ranked[-1] if controls_copy is not None else (False, None)
    if exists:  # the head announces the ranking's length: it must be whole
        count = orjson.loads(raw[0]).get("n") if raw else None
        out += checks.differs("ranked_feed",
                              ranked_feed.rank_key(keys, user_id, calc_copy, controls_copy),
                              count, len(raw) - 1, **who)
    return out


def _ranked_page(state: AppState, user_id: int, force: bool) -> None:
    with app_context(state):
        ranked_service.ranked_page(user_id, 0, 1, force=force)


def ranked_rebuild(state: AppState, user_id: int) -> None:
    # The inputs are cached under the calc version and only loaded when missing: drop the
    # current version's, then recompute the ranking (which reloads them) version-checked.
    version = state.filler.version(checks.PATH, ranked_feed.scope(user_id))
    checks.drop(state.cache, [ranked_feed.input_key(state.cache.keys, user_id, n, version)
                              for n in ranked_feed.INPUT_NAMES])
    _ranked_page(state, user_id, force=True)


def ranked_warm(state: AppState, user_id: int) -> None:
    _ranked_page(state, user_id, force=False)


def app_context(state: AppState) -> AbstractContextManager[Any]:
    """An app context whose ``state()`` is ``state`` (the ranking's use case reads it)."""
    if has_app_context() and current_app.extensions.get("hc") is state:
        return nullcontext()
    app = Flask("jobs")
    app.extensions["hc"] = state
    return app.app_context()


READ_PATHS: dict[str, ReadPath] = {
    "group_feed": ReadPath("group_feed", group_feed.check, group_feed.rebuild, group_feed.warm,
                           group_feed.check_group, group_feed.rebuild_group),
    "activity_feed": ReadPath("activity_feed", activity_feed.check, activity_feed.rebuild,
                              activity_feed.warm),
    "community_feed": ReadPath("community_feed", community_feed.check, community_feed.rebuild,
                               community_feed.warm),
    "ranked_feed": ReadPath("ranked_feed", ranked_check, ranked_rebuild, ranked_warm),
    "recent_reels": ReadPath("recent_reels", recent_reels.check, recent_reels.rebuild,
                             recent_reels.warm),
}
assert set(READ_PATHS) == set(store.PATHS)


def get(names: Sequence[str] | None = None) -> list[ReadPath]:
    """The read paths named (all by default); ``KeyError`` for an unknown name."""
    return [READ_PATHS[n] for n in (names or READ_PATHS)]


def group_ids(state: AppState, after: int = 0, batch: int = 500) -> Iterator[int]:
    while True:
        with state.db.session() as session:
            ids = store.group_ids(session, after, batch)
        yield from ids
        if len(ids) < batch:
            return
        after = ids[-1]
