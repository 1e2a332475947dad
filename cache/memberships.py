"""Key layout of a user's group memberships (the groups whose feeds they may read).

``{u:<uid>}:groups`` is a set of group ids plus the sentinel ``0`` (group ids are
positive), so a user in no group still has a key and an absent key always means "not
cached". A membership change bumps the user's ``groups`` scope and deletes the cached set
(``service/admin.py``); the next read rebuilds it from ``group_members``.

Being in the same slot as the user's read state (``cache/read_state.py``), a membership
check rides in the same pipeline as the read-state lookups.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from cache import stats
from cache.client import NO_VALUE
from cache.fill import Filler
from cache.keys import Keyspace, Scope, user_tag

PATH = "memberships"
SENTINEL = 0


def scope(user_id: int) -> Scope:
    return Scope(user_tag(user_id), "groups")


def key(keys: Keyspace, user_id: int) -> str:
    return keys.key(user_tag(user_id), "groups")


def queue_check(pipe: Any, keys: Keyspace, user_id: int, group_id: int) -> None:
    """Queue one atomic command answering "is the user in this group" (see ``parse_check``)."""
    pipe.smismember(key(keys, user_id), [group_id, SENTINEL])


def parse_check(reply: list[int]) -> Any:
    """True / False, or ``NO_VALUE`` if the set is not cached."""
    is_member, cached = reply
    if not cached:
        return NO_VALUE
    return bool(is_member)


def queue_groups(pipe: Any, keys: Keyspace, user_id: int) -> None:
    pipe.smembers(key(keys, user_id))


def parse_groups(reply: Iterable[bytes]) -> Any:
    """The user's group ids, or ``NO_VALUE`` if the set is not cached."""
    ids = {int(x) for x in reply}
    if SENTINEL not in ids:
        return NO_VALUE
    ids.discard(SENTINEL)
    return frozenset(ids)


def fill(filler: Filler, user_id: int, load: Callable[[], list[int]],
         refresh: bool = False) -> frozenset[int]:
    """Rebuild the cached set from ``load()`` (the user's group ids from Postgres).

    If another process is filling it, waits briefly for that fill (then reads Postgres
    without writing). After a miss an existing set is read; ``refresh=True`` replaces it.
    Raises ``CacheUnavailable`` if Redis fails.
    """
    set_key = key(filler.cache.keys, user_id)

    def stage(pipe: Any, temps: dict[str, str], ids: list[int]) -> None:
        pipe.sadd(temps[set_key], SENTINEL, *ids)

    def poll(r: Any) -> Any:
        return parse_groups(r.smembers(set_key))

    stats.count(PATH, "miss")
    return frozenset(filler.fill_or_wait(PATH, scope(user_id), [set_key], load, stage, poll,
                                         refresh=refresh))
