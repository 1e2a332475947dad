"""Helpers of the cache operations' tests: SQL in a session, a user's groups, the demo
data's most active user."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import text

FROZEN_NOW = datetime(2030, 1, 1, tzinfo=UTC)


def sql(state, query: str, **params) -> list[tuple]:
    with state.db.engine.begin() as conn:
        return [tuple(r) for r in conn.execute(text(query), params)]


def groups_of(state, user_id: int) -> list[int]:
    return [r[0] for r in sql(state, "SELECT group_id FROM group_members WHERE user_id = :u "
                                     "ORDER BY group_id", u=user_id)]


def active_user(state, users: list[int]) -> int:
    """The user with the most groups (views need one) and some data everywhere."""
    return max(users, key=lambda u: (len(groups_of(state, u)), -u))
