"""Key layout of a user's group memberships (the groups whose feeds they may read).

A membership change bumps the user's ``groups`` scope and deletes the cached set; the
next read rebuilds it from ``group_members``.
"""

from __future__ import annotations

from cache.keys import Keyspace, Scope, user_tag


def scope(user_id: int) -> Scope:
    return Scope(user_tag(user_id), "groups")


def key(keys: Keyspace, user_id: int) -> str:
    return keys.key(user_tag(user_id), "groups")
