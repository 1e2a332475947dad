"""SQL of the community feed's trending window and its durable walk snapshots, with their
deep tails (the rest of its queries are the shared post queries in ``storage.posts``).

``trending_score_sql`` is API.md's trending score in SQL, in the integer form of
``cache.community_feed.trending_score`` (x 10^6, + 1, below 2^53), so Postgres ranks
posts it never sends to Python (the deep tail) in the same order."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    BigInteger,
    Float,
    String,
    and_,
    case,
    cast,
    delete,
    func,
    insert,
    literal,
    or_,
    select,
    true,
    tuple_,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session

from storage.models import Post, TrendingSnapshot, TrendingSnapshotTail
from storage.posts import Engagement, _filtered, can_see, grouped, not_blocked_by


def trending_window(session: Session, since: datetime, until: datetime,
                    limit: int) -> list[Engagement]:
    """Engagement of the live posts created in ``[since, until]``, newest ``limit``."""
    query = (
        select(Post.id, Post.created_at, Post.like_count, Post.comment_count,
               Post.view_count, Post.is_featured)
        .where(Post.deleted_at.is_(None), Post.created_at.between(since, until))
        .order_by(Post.created_at.desc(), Post.id.desc())
        .limit(limit)
    )
    return [Engagement(*row) for row in session.execute(query)]


def trending_score_sql(ref_time: datetime) -> Any:
    """The trending score at ``ref_time`` of each ``posts`` row, as a SQL expression."""
    raw = (cast(Post.like_count, Float) + 2 * cast(Post.comment_count, Float)
           + 0.1 * cast(Post.view_count, Float))
    age_h = func.greatest(
        cast(func.extract("epoch", literal(ref_time) - Post.created_at), Float) / 3600.0, 0.1)
    scaled = raw / func.power(age_h, 1.5) * case((Post.is_featured, 1.5), else_=1.0) * 1e6
    return func.least(cast(func.round(scaled), BigInteger) + 1, 2**53 - 1)


def trending_older(session: Session, before: tuple[datetime, int] | None,
                   ref_time: datetime, limit: int) -> list[Engagement]:
    """Engagement of the ``limit`` best live posts (by trending score at ``ref_time``) among
    those created before the window: ``(created_at, id) < before``, every post if None.
    One scan of the older posts, no sort beyond the top ``limit``."""
    score = trending_score_sql(ref_time)
    query = (
        select(Post.id, Post.created_at, Post.like_count, Post.comment_count,
               Post.view_count, Post.is_featured)
        .where(Post.deleted_at.is_(None))
        .order_by(score.desc(), Post.id.desc())
        .limit(limit)
    )
    if before is not None:
        query = query.where(tuple_(Post.created_at, Post.id) < tuple_(*before))
    return [Engagement(*row) for row in session.execute(query)]


# --- durable trending snapshots (one row per walk start, shared within the reuse window) --

SNAPSHOT_LOCK = 0x63665F7473  # advisory lock id of snapshot creation ("cf_ts")


@dataclass(frozen=True)
class SnapshotRow:
    id: int
    age_s: float  # seconds since it was taken, by the database's clock
    floor: tuple[int, int] | None = None  # below this key the deep tail holds the posts


def _age():
    return func.extract("epoch", func.now() - TrendingSnapshot.created_at)


def try_lock_snapshots(session: Session) -> bool:
    """Take the snapshot-creation lock for this transaction, without waiting."""
    return bool(session.execute(
        select(func.pg_try_advisory_xact_lock(SNAPSHOT_LOCK))).scalar_one())


def latest_snapshot(session: Session, max_age_s: float) -> SnapshotRow | None:
    """The newest snapshot taken less than ``max_age_s`` seconds ago (database clock)."""
    query = (
        select(TrendingSnapshot.id, _age(), TrendingSnapshot.floor_score,
               TrendingSnapshot.floor_id)
        .where(TrendingSnapshot.created_at > func.now() - timedelta(seconds=max_age_s))
        .order_by(TrendingSnapshot.id.desc())
        .limit(1)
    )
    row = session.execute(query).first()
    return None if row is None else SnapshotRow(row[0], float(row[1]), _floor(row[2], row[3]))


def _floor(score: int | None, post_id: int | None) -> tuple[int, int] | None:
    return None if score is None or post_id is None else (int(score), int(post_id))


def create_snapshot(session: Session, ref_time: datetime,
                    entries: Sequence[tuple[int, int]],
                    floor: tuple[int, int] | None = None) -> SnapshotRow:
    """Insert a ranking, ``(score, id)`` best first, complete above ``floor`` (None:
    complete). The caller commits."""

    def array(values: Sequence[int]) -> Any:
        # One text literal cast in SQL: ~2x faster than binding 10,000 ints one by one.
        return cast(literal("{" + ",".join(map(str, values)) + "}", String),
                    ARRAY(BigInteger))

    sid = session.execute(
        insert(TrendingSnapshot)
        .values(ref_time=ref_time, post_ids=array([pid for _, pid in entries]),
                scores=array([score for score, _ in entries]),
                floor_score=None if floor is None else floor[0],
                floor_id=None if floor is None else floor[1])
        .returning(TrendingSnapshot.id)).scalar_one()
    return SnapshotRow(int(sid), 0.0, floor)


def snapshot_entries(session: Session,
                     sid: int) -> tuple[SnapshotRow, list[tuple[int, int]]] | None:
    """A snapshot's whole ranking, ``(score, id)`` best first; None if unknown."""
    row = session.execute(
        select(_age(), TrendingSnapshot.scores, TrendingSnapshot.post_ids,
               TrendingSnapshot.floor_score, TrendingSnapshot.floor_id)
        .where(TrendingSnapshot.id == sid)).first()
    if row is None:
        return None
    age, scores, ids, floor_score, floor_id = row
    return (SnapshotRow(sid, float(age), _floor(floor_score, floor_id)),
            list(zip(scores, ids, strict=True)))


def snapshot_after(session: Session, sid: int, after: tuple[int, int] | None,
                   n: int) -> list[tuple[int, int]] | None:
    """Up to ``n`` entries of snapshot ``sid`` strictly after the ``after`` key (rank
    order); None if the snapshot is unknown (expired and deleted, or never existed)."""
    k = func.unnest(TrendingSnapshot.scores, TrendingSnapshot.post_ids).table_valued(
        "score", "id", with_ordinality="ord").render_derived()
    query = select(k.c.score, k.c.id).select_from(TrendingSnapshot).join(k, true())
    query = query.where(TrendingSnapshot.id == sid)
    if after is not None:
        query = query.where(tuple_(k.c.score, k.c.id) < tuple_(after[0], after[1]))
    rows = session.execute(query.order_by(k.c.ord).limit(n)).all()
    if rows:
        return [(int(s), int(i)) for s, i in rows]
    found = session.execute(
        select(TrendingSnapshot.id).where(TrendingSnapshot.id == sid)).first()
    return [] if found is not None else None


def count_snapshot_live(session: Session, sid: int, asset_type: str | None,
                        tags: Sequence[str]) -> int:
    """How many posts of snapshot ``sid`` are live and match the filters: the number a
    full walk of it returns."""
    ids = select(func.unnest(TrendingSnapshot.post_ids)).where(TrendingSnapshot.id == sid)
    query = select(func.count()).select_from(Post).where(
        Post.id.in_(ids), Post.deleted_at.is_(None))
    return int(session.execute(_filtered(query, asset_type, tags)).scalar_one())


def count_snapshot_grouped(session: Session, sid: int, asset_type: str | None,
                           tags: Sequence[str],
                           visible_to: tuple[int | None, bool] | None = None,
                           unblocked_for: int | None = None,
                           authors: Sequence[int] | None = None,
                           ) -> tuple[int, dict[int, int]]:
    """How many posts a full walk of snapshot ``sid`` returns (live, matching the
    filters, that ``visible_to`` may see if given, not by an author ``unblocked_for``
    blocked if given, only by ``authors`` if given): those of its arrays and, if it has a
    floor, every post created before it was taken (its deep tail); grouped by
    collective: (public, {collective id: n})."""
    if authors is not None and not authors:
        return 0, {}
    snap = select(TrendingSnapshot.created_at, TrendingSnapshot.floor_score).where(
        TrendingSnapshot.id == sid).subquery()
    ids = select(func.unnest(TrendingSnapshot.post_ids)).where(TrendingSnapshot.id == sid)
    deep = and_(snap.c.floor_score.isnot(None), Post.created_at <= snap.c.created_at)
    query = (select(Post.collective_id, func.count())
             .select_from(Post).join(snap, true())
             .where(or_(Post.id.in_(ids), deep), Post.deleted_at.is_(None))
             .group_by(Post.collective_id))
    if visible_to is not None:
        query = query.where(can_see(*visible_to))
    if unblocked_for is not None:
        query = query.where(not_blocked_by(unblocked_for))
    if authors is not None:
        query = query.where(Post.author_id.in_(list(authors)))
    return grouped(session.execute(_filtered(query, asset_type, tags)))


def ensure_tail(session: Session, sid: int) -> bool:
    """Write snapshot ``sid``'s deep tail unless it is written; False if the snapshot is
    unknown. Commits. Concurrent callers wait on the snapshot's row lock, so the tail is
    written once; the cost is one pass over the live posts (the first deep page's).

    The tail: the arrays' entries below the floor, plus every live post created before
    the snapshot was taken that the arrays do not hold, scored at the snapshot's
    ``ref_time`` with its counters now, capped just below the floor (the walk returns
    the tail after every key above the floor)."""
    query = (select(TrendingSnapshot.tail_ready, TrendingSnapshot.floor_score,
                    TrendingSnapshot.floor_id, TrendingSnapshot.created_at,
                    TrendingSnapshot.ref_time)
             .where(TrendingSnapshot.id == sid))
    row = session.execute(query).first()
    if row is not None and not row[0] and row[1] is not None:
        session.rollback()  # written by nobody yet: lock the row, then look again
        row = session.execute(query.with_for_update()).first()
    if row is None:
        session.rollback()
        return False
    ready, floor_score, floor_id, taken, ref_time = row
    if ready or floor_score is None:
        session.rollback()
        return True
    own = func.unnest(TrendingSnapshot.scores, TrendingSnapshot.post_ids).table_valued(
        "score", "id").render_derived()
    below = (select(literal(sid), own.c.score, own.c.id)
             .select_from(TrendingSnapshot).join(own, true())
             .where(TrendingSnapshot.id == sid,
                    tuple_(own.c.score, own.c.id) < tuple_(floor_score, floor_id)))
    held = select(func.unnest(TrendingSnapshot.post_ids)).where(TrendingSnapshot.id == sid)
    older = (select(literal(sid), func.least(trending_score_sql(ref_time), floor_score - 1),
                    Post.id)
             .where(Post.deleted_at.is_(None), Post.created_at <= taken,
                    Post.id.not_in(held)))
    # Inserted in key order: appends to the primary key's rightmost page, not splits.
    rows = below.union_all(older).subquery()
    session.execute(insert(TrendingSnapshotTail).from_select(
        ["snapshot_id", "score", "post_id"],
        select(*rows.c).order_by(rows.c[1], rows.c[2])))
    session.execute(update(TrendingSnapshot).where(TrendingSnapshot.id == sid)
                    .values(tail_ready=True))
    session.commit()
    return True


def tail_after(session: Session, sid: int, after: tuple[int, int] | None,
               n: int) -> list[tuple[int, int]]:
    """Up to ``n`` ``(score, id)`` of snapshot ``sid``'s deep tail strictly after the
    ``after`` key, best first (one index range of its primary key)."""
    t = TrendingSnapshotTail
    query = select(t.score, t.post_id).where(t.snapshot_id == sid)
    if after is not None:
        query = query.where(tuple_(t.score, t.post_id) < tuple_(after[0], after[1]))
    query = query.order_by(t.score.desc(), t.post_id.desc()).limit(n)
    return [(int(s), int(i)) for s, i in session.execute(query)]


def delete_snapshots_older_than(session: Session, max_age_s: float) -> int:
    """Delete snapshots taken at least ``max_age_s`` seconds ago (database clock) and their
    deep tails; returns how many snapshots. The caller commits."""
    gone = list(session.execute(delete(TrendingSnapshot).where(
        TrendingSnapshot.created_at <= func.now() - timedelta(seconds=max_age_s))
        .returning(TrendingSnapshot.id)).scalars())
    if gone:
        session.execute(delete(TrendingSnapshotTail)
                        .where(TrendingSnapshotTail.snapshot_id.in_(gone)))
    return len(gone)
