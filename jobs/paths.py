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
from dataclasses import dataclass

from cache import activity_feed, checks, community_feed, group_feed, recent_reels
from cache.checks import Difference
from service import ranked_feed_ops
from service.bootstrap import AppState
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
            with state.db.read() as session:
                ids = store.user_ids(session, self.name, after, batch)
            yield from ids
            if len(ids) < batch:
                return
            after = ids[-1]


# --- the personalized ranking: its check is cache/ranked_feed.py's; rebuilding and warming
# compute the ranking, which is its use case's (service/ranked_feed_ops.py).


def ranked_check(state: AppState, user_id: int) -> list[Difference]:
    return [d for key, cached, truth in ranked_feed_ops.check_user(state, user_id)
            for d in checks.differs("ranked_feed", key, cached, truth, user_id=user_id)]


def ranked_rebuild(state: AppState, user_id: int) -> None:
    ranked_feed_ops.rebuild_user(state, user_id, checks.PATH)


READ_PATHS: dict[str, ReadPath] = {
    "group_feed": ReadPath("group_feed", group_feed.check, group_feed.rebuild, group_feed.warm,
                           group_feed.check_group, group_feed.rebuild_group),
    "activity_feed": ReadPath("activity_feed", activity_feed.check, activity_feed.rebuild,
                              activity_feed.warm),
    "community_feed": ReadPath("community_feed", community_feed.check, community_feed.rebuild,
                               community_feed.warm),
    "ranked_feed": ReadPath("ranked_feed", ranked_check, ranked_rebuild,
                            ranked_feed_ops.warm_user),
    "recent_reels": ReadPath("recent_reels", recent_reels.check, recent_reels.rebuild,
                             recent_reels.warm),
}
assert set(READ_PATHS) == set(store.PATHS)


def get(names: Sequence[str] | None = None) -> list[ReadPath]:
    """The read paths named (all by default); ``KeyError`` for an unknown name."""
    return [READ_PATHS[n] for n in (names or READ_PATHS)]


def group_ids(state: AppState, after: int = 0, batch: int = 500) -> Iterator[int]:
    while True:
        with state.db.read() as session:
            ids = store.group_ids(session, after, batch)
        yield from ids
        if len(ids) < batch:
            return
        after = ids[-1]
