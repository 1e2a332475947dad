"""SQL of the group feed (API section 1): items with dense per-group positions, and who
viewed what (``feed_item_views``, the record of read state).

Positions: ``groups.last_position`` is the counter. ``create_item`` takes the next one with
``UPDATE ... RETURNING`` in the caller's transaction, so positions are dense and become
visible in order (a transaction holding position p+1 committed after the one holding p).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, insert, select, text, tuple_, update
from sqlalchemy.orm import Session

from storage.models import FeedItem, FeedItemView, Group, GroupMember
from storage.setup import group_exists, is_member

__all__ = [
    "group_exists",
    "is_member",
    "create_item",
    "get_live_item",
    "list_items",
    "newest_item_positions",
    "live_items_by_id",
    "soft_delete_item",
    "get_view",
    "add_view",
    "remove_view",
    "mark_all_viewed",
    "viewers",
    "member_group_ids",
    "viewed_positions",
    "live_positions",
    "viewed_among",
    "unread_counts",
]


# --- items ------------------------------------------------------------------------------


def create_item(
    session: Session,
    group_id: int,
    author_id: int,
    title: str,
    content_type: str,
    body: str | None,
) -> FeedItem | None:
    """Insert an item at the group's next position; None if the group does not exist.

    The ``UPDATE groups`` row lock is held until the caller commits.
    """
    position = session.execute(
        update(Group)
        .where(Group.id == group_id)
        .values(last_position=Group.last_position + 1)
        .returning(Group.last_position)
    ).scalar_one_or_none()
    if position is None:
        return None
    return session.execute(
        insert(FeedItem)
        .values(
            group_id=group_id,
            position=position,
            author_id=author_id,
            title=title,
            content_type=content_type,
            body=body,
        )
        .returning(FeedItem)
    ).scalar_one()


def get_live_item(session: Session, item_id: int) -> FeedItem | None:
    """The item if it exists and is not deleted."""
    return session.execute(
        select(FeedItem).where(FeedItem.id == item_id, FeedItem.deleted_at.is_(None))
    ).scalar_one_or_none()


def list_items(
    session: Session, group_id: int, limit: int, before: int | None = None
) -> list[FeedItem]:
    """Live items of a group, newest first (ids follow positions within a group)."""
    query = select(FeedItem).where(FeedItem.group_id == group_id, FeedItem.deleted_at.is_(None))
    if before is not None:
        query = query.where(FeedItem.id < before)
    return list(session.execute(query.order_by(FeedItem.id.desc()).limit(limit)).scalars())


def newest_item_positions(session: Session, group_id: int, limit: int
                          ) -> list[tuple[int, int]]:
    """(id, position) of the group's newest ``limit`` live items, newest first."""
    rows = session.execute(
        select(FeedItem.id, FeedItem.position)
        .where(FeedItem.group_id == group_id, FeedItem.deleted_at.is_(None))
        .order_by(FeedItem.id.desc())
        .limit(limit)
    )
    return [(r.id, r.position) for r in rows]


def live_items_by_id(session: Session, group_id: int, item_ids: Sequence[int]
                     ) -> list[FeedItem]:
    """The group's live items among ``item_ids`` (one statement, primary-key lookups)."""
    if not item_ids:
        return []
    return list(session.execute(
        select(FeedItem).where(FeedItem.id.in_(list(item_ids)), FeedItem.group_id == group_id,
                               FeedItem.deleted_at.is_(None))
    ).scalars())


def soft_delete_item(session: Session, item_id: int) -> int | None:
    """Mark a live item deleted; returns its position, or None if it was not live."""
    return session.execute(
        update(FeedItem)
        .where(FeedItem.id == item_id, FeedItem.deleted_at.is_(None))
        .values(deleted_at=func.now())
        .returning(FeedItem.position)
    ).scalar_one_or_none()


# --- views (the record of read state) ----------------------------------------------------

_ADD_VIEW = text(
    "WITH ins AS ("
    " INSERT INTO feed_item_views (item_id, user_id, group_id, position, viewed_at)"
    " VALUES (:item, :user, :group, :position, now())"
    " ON CONFLICT (item_id, user_id) DO NOTHING RETURNING viewed_at)"
    " SELECT viewed_at, true FROM ins"
    " UNION ALL"
    " SELECT viewed_at, false FROM feed_item_views WHERE item_id = :item AND user_id = :user"
    " LIMIT 1"
)

# The view with its read state's version bump, in one statement: the bump (an upsert of the
# ``cache_versions`` row, ``storage/cache_state.py``'s) runs first, as the insert reads its
# row, so its row lock serialises this scope's writers before the view is written, as
# ``bump_version`` then ``add_view`` did in two statements.
_ADD_VIEW_BUMPING = text(
    "WITH bump AS ("
    " INSERT INTO cache_versions (name, version) VALUES (:name, 1)"
    " ON CONFLICT (name) DO UPDATE SET version = cache_versions.version + 1"
    " RETURNING version),"
    " ins AS ("
    " INSERT INTO feed_item_views (item_id, user_id, group_id, position, viewed_at)"
    " SELECT :item, :user, :group, :position, now() FROM bump"
    " ON CONFLICT (item_id, user_id) DO NOTHING RETURNING viewed_at)"
    " SELECT (SELECT viewed_at FROM ins),"
    " (SELECT viewed_at FROM feed_item_views WHERE item_id = :item AND user_id = :user),"
    " (SELECT version FROM bump)"
)

# One statement, one snapshot: the inserted rows and the watermark (the group's last
# position) describe the same moment, so every position <= watermark is either a live
# item now viewed or a deleted item.
_MARK_ALL = text(
    "WITH ins AS ("
    " INSERT INTO feed_item_views (item_id, user_id, group_id, position, viewed_at)"
    " SELECT id, :user, group_id, position, now() FROM feed_items"
    " WHERE group_id = :group AND deleted_at IS NULL"
    " ON CONFLICT (item_id, user_id) DO NOTHING RETURNING 1)"
    " SELECT (SELECT count(*) FROM ins),"
    " (SELECT last_position FROM groups WHERE id = :group)"
)


@dataclass(frozen=True)
class ViewerItem:
    """A live item as one viewer's mark-viewed / mark-unread needs it."""

    id: int
    group_id: int
    position: int
    is_member: bool  # the viewer belongs to the item's group
    viewed_at: datetime | None  # the viewer's view of it, if any


_VIEWER_ITEM = text(
    "SELECT fi.id, fi.group_id, fi.position,"
    "  EXISTS (SELECT 1 FROM group_members m"
    "          WHERE m.group_id = fi.group_id AND m.user_id = :user) AS is_member,"
    "  (SELECT v.viewed_at FROM feed_item_views v"
    "   WHERE v.item_id = fi.id AND v.user_id = :user) AS viewed_at "
    "FROM feed_items fi WHERE fi.id = :item AND fi.deleted_at IS NULL"
)


def viewer_item(session: Session, item_id: int, user_id: int) -> ViewerItem | None:
    """The live item, whether ``user_id`` is a member of its group and their view of it,
    in one statement; None if the item is missing or deleted."""
    row = session.execute(_VIEWER_ITEM, {"item": item_id, "user": user_id}).first()
    return None if row is None else ViewerItem(row.id, row.group_id, row.position,
                                               bool(row.is_member), row.viewed_at)


def get_view(session: Session, item_id: int, user_id: int) -> datetime | None:
    return session.execute(
        select(FeedItemView.viewed_at).where(
            FeedItemView.item_id == item_id, FeedItemView.user_id == user_id
        )
    ).scalar_one_or_none()


def add_view(session: Session, item: FeedItem | ViewerItem, user_id: int
             ) -> tuple[datetime, bool]:
    """Record that ``user_id`` viewed ``item``; keeps the first ``viewed_at``.

    Returns ``(viewed_at, inserted)``.
    """
    row = session.execute(
        _ADD_VIEW,
        {"item": item.id, "user": user_id, "group": item.group_id, "position": item.position},
    ).one()
    return row[0], bool(row[1])


def add_view_bumping(session: Session, item: FeedItem | ViewerItem, user_id: int,
                      version_name: str) -> tuple[datetime, bool, int]:
    """``add_view`` and the bump of version ``version_name`` (the read state's scope) in
    one statement; returns ``(viewed_at, inserted, new version)``.

    A view committed by another transaction while this one waited for the version row's
    lock is newer than the statement's snapshot: the insert skips it (a conflict) and the
    snapshot cannot read it, so it is read by a second statement, which can."""
    inserted, existing, version = session.execute(
        _ADD_VIEW_BUMPING,
        {"item": item.id, "user": user_id, "group": item.group_id, "position": item.position,
         "name": version_name},
    ).one()
    if inserted is not None:
        return inserted, True, int(version)
    if existing is None:
        existing = get_view(session, item.id, user_id)
        if existing is None:  # deleted meanwhile by a mark-unread: record it again
            viewed_at, was_inserted = add_view(session, item, user_id)
            return viewed_at, was_inserted, int(version)
    return existing, False, int(version)


def remove_view(session: Session, item_id: int, user_id: int) -> bool:
    """Forget a view; True if there was one."""
    result = session.execute(
        text("DELETE FROM feed_item_views WHERE item_id = :item AND user_id = :user"),
        {"item": item_id, "user": user_id},
    )
    return result.rowcount > 0


def mark_all_viewed(session: Session, group_id: int, user_id: int) -> tuple[int, int]:
    """Mark every live item of the group viewed in one statement.

    Returns ``(newly_viewed, watermark)``: how many items were unread, and the group's last
    position in the same snapshot.
    """
    count, watermark = session.execute(_MARK_ALL, {"user": user_id, "group": group_id}).one()
    return int(count), int(watermark or 0)


@dataclass(frozen=True)
class Viewer:
    user_id: int
    viewed_at: datetime


def viewers(
    session: Session, item_id: int, limit: int, after: tuple[datetime, int] | None = None
) -> tuple[int, list[Viewer]]:
    """Who viewed an item, most recent first; ``after`` is the last (viewed_at, user_id) of
    the previous page. Returns ``(total count, page)``."""
    total = session.execute(
        select(func.count()).select_from(FeedItemView).where(FeedItemView.item_id == item_id)
    ).scalar_one()
    query = select(FeedItemView.user_id, FeedItemView.viewed_at).where(
        FeedItemView.item_id == item_id
    )
    if after is not None:
        query = query.where(
            tuple_(FeedItemView.viewed_at, FeedItemView.user_id) < tuple_(after[0], after[1])
        )
    rows = session.execute(
        query.order_by(FeedItemView.viewed_at.desc(), FeedItemView.user_id.desc()).limit(limit)
    ).all()
    return int(total), [Viewer(user_id=r[0], viewed_at=r[1]) for r in rows]


# --- read state: what the cache is filled from, and the answers without it ---------------


def member_group_ids(session: Session, user_id: int) -> list[int]:
    return list(
        session.execute(
            select(GroupMember.group_id).where(GroupMember.user_id == user_id)
        ).scalars()
    )


def group_member_ids(session: Session, group_id: int) -> list[int]:
    return list(
        session.execute(
            select(GroupMember.user_id)
            .where(GroupMember.group_id == group_id)
            .order_by(GroupMember.user_id)
        ).scalars()
    )


def viewed_positions(session: Session, user_id: int, group_id: int) -> list[int]:
    """Positions of every item of the group the user viewed (deleted items included)."""
    return list(
        session.execute(
            select(FeedItemView.position).where(
                FeedItemView.user_id == user_id, FeedItemView.group_id == group_id
            )
        ).scalars()
    )


def live_positions(session: Session, group_id: int) -> list[int]:
    return list(
        session.execute(
            select(FeedItem.position).where(
                FeedItem.group_id == group_id, FeedItem.deleted_at.is_(None)
            )
        ).scalars()
    )


def viewed_among(
    session: Session, user_id: int, group_id: int, positions: Sequence[int]
) -> set[int]:
    """Which of ``positions`` the user viewed."""
    if not positions:
        return set()
    return set(
        session.execute(
            select(FeedItemView.position).where(
                FeedItemView.user_id == user_id,
                FeedItemView.group_id == group_id,
                FeedItemView.position.in_(list(positions)),
            )
        ).scalars()
    )


_UNREAD = text(
    "SELECT i.group_id, count(*) FROM feed_items i"
    " WHERE i.group_id = ANY(:groups) AND i.deleted_at IS NULL"
    " AND NOT EXISTS (SELECT 1 FROM feed_item_views v"
    "                 WHERE v.item_id = i.id AND v.user_id = :user)"
    " GROUP BY i.group_id"
)


_UNREAD_IN_GROUP = text(
    "SELECT u.user_id,"
    " (SELECT count(*) FROM feed_items i WHERE i.group_id = :group AND i.deleted_at IS NULL)"
    " - (SELECT count(*) FROM feed_item_views v JOIN feed_items i ON i.id = v.item_id"
    "    WHERE v.user_id = u.user_id AND v.group_id = :group AND i.deleted_at IS NULL)"
    " FROM unnest(CAST(:users AS bigint[])) AS u(user_id)"
)


def unread_counts_in_group(session: Session, group_id: int, user_ids: Sequence[int]
                           ) -> dict[int, int]:
    """Each user's unread live items in one group, in one statement (the cache-less answer
    for many members at once: a group item's live events for members whose read state is
    not cached)."""
    if not user_ids:
        return {}
    rows = session.execute(_UNREAD_IN_GROUP, {"group": group_id, "users": list(user_ids)})
    return {int(user_id): int(count) for user_id, count in rows}


def unread_counts(session: Session, user_id: int, group_ids: Sequence[int]) -> dict[int, int]:
    """Unread live items per group, computed in Postgres (the cache-less answer)."""
    counts = dict.fromkeys(group_ids, 0)
    if group_ids:
        for group_id, count in session.execute(
            _UNREAD, {"groups": list(group_ids), "user": user_id}
        ):
            counts[group_id] = int(count)
    return counts
