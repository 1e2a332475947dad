"""SQL of the cache operations (rebuild, reconciliation, warming): which users have data
for each read path, streamed in id order, and the version rows a check compares against.

Every user stream is keyset-paginated (``id > after ORDER BY id LIMIT n``) with the bound
pushed into each branch of a union, so each page is a few index range scans, whatever
the table sizes; a rebuild resumes from the last id it finished.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import bindparam, select, text
from sqlalchemy.orm import Session

from storage.models import CacheVersion

# Per read path: a union of "user_id > :after ORDER BY user_id LIMIT :n" branches.
_BRANCHES: dict[str, tuple[str, ...]] = {
    "group_feed": ("SELECT DISTINCT user_id AS u FROM group_members",),
    "activity_feed": ("SELECT DISTINCT user_id AS u FROM activities",),
    # Every user has a following feed and a personalized ranking (empty or not).
    "community_feed": ("SELECT id AS u FROM users",),
    "ranked_feed": ("SELECT id AS u FROM users",),
    "recent_reels": ("SELECT DISTINCT user_id AS u FROM reel_views",),
}

PATHS = tuple(_BRANCHES)


def _union(path: str) -> str:
    parts = []
    for branch in _BRANCHES[path]:
        column = branch.split(" AS u")[0].split()[-1]
        parts.append(f"({branch} WHERE {column} > :after ORDER BY u LIMIT :n)")
    return " UNION ".join(parts)


def user_ids(session: Session, path: str, after: int, limit: int) -> list[int]:
    """The next ``limit`` user ids above ``after`` that have data for ``path``."""
    sql = f"SELECT u FROM ({_union(path)}) x ORDER BY u LIMIT :n"
    return [int(u) for u in session.execute(text(sql), {"after": after, "n": limit}).scalars()]


def count_users(session: Session, path: str, after: int = 0) -> int:
    """How many users above ``after`` have data for ``path`` (a progress bar's total)."""
    branches = " UNION ".join(
        f"({b} WHERE {b.split(' AS u')[0].split()[-1]} > :after)" for b in _BRANCHES[path]
    )
    return int(session.execute(text(f"SELECT count(*) FROM ({branches}) x"),
                               {"after": after}).scalar_one())


def sample_user_ids(session: Session, path: str, n: int) -> list[int]:
    """Up to ``n`` random users with data for ``path`` (reconciliation's sample)."""
    branches = " UNION ".join(f"({b})" for b in _BRANCHES[path])
    sql = f"SELECT u FROM ({branches}) x ORDER BY random() LIMIT :n"
    return sorted(int(u) for u in session.execute(text(sql), {"n": n}).scalars())


def group_ids(session: Session, after: int, limit: int) -> list[int]:
    return [int(g) for g in session.execute(
        text("SELECT id FROM groups WHERE id > :after ORDER BY id LIMIT :n"),
        {"after": after, "n": limit}).scalars()]


def group_member_ids(session: Session, group_id: int) -> list[int]:
    return [int(u) for u in session.execute(
        text("SELECT user_id FROM group_members WHERE group_id = :g ORDER BY user_id"),
        {"g": group_id}).scalars()]


def versions(session: Session, names: Sequence[str]) -> dict[str, int]:
    """The version rows ``names`` (0 for a row never bumped), in one query."""
    out = dict.fromkeys(names, 0)
    if names:
        rows = session.execute(
            select(CacheVersion.name, CacheVersion.version).where(
                CacheVersion.name.in_(bindparam("names", expanding=True))),
            {"names": list(names)},
        )
        for name, version in rows:
            out[name] = int(version)
    return out
