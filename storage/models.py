"""SQLAlchemy models: the whole schema of the five API sections plus the cache core's tables.

Postgres is the source of truth for everything Redis holds. Migrations in
``storage/migrations`` create these tables; ``create_all`` is used only by tests that
check the migrations match these models.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Computed,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    SmallInteger,
    String,
    Text,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, declared_attr, mapped_column

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


def _now() -> Mapped[datetime]:
    return mapped_column(DateTime(timezone=True), server_default=func.now(), nullable=False)


def _id() -> Mapped[int]:
    return mapped_column(BigInteger, primary_key=True, autoincrement=True)


# --- people -----------------------------------------------------------------------------


SUBSCRIPTION_TIERS = ("free", "plus", "pro")


class User(Base):
    """A user's profile (seed 002's author): written by the profile endpoints (or imported).

    Users need no row: one without a row shows ``storage.profiles.DEFAULT_*`` in every feed.
    """

    __tablename__ = "users"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    display_name: Mapped[str] = mapped_column(String(100), nullable=False)
    avatar_url: Mapped[str | None] = mapped_column(String(2048))
    subscription_tier: Mapped[str] = mapped_column(String(10), nullable=False,
                                                   server_default="free")
    created_at: Mapped[datetime] = _now()
    updated_at: Mapped[datetime] = _now()
    __table_args__ = (
        CheckConstraint("subscription_tier IN ('free', 'plus', 'pro')", name="tier"),
    )


# --- section 1: groups and their feed ------------------------------------------------------


class Group(Base):
    __tablename__ = "groups"
    id: Mapped[int] = _id()
    name: Mapped[str] = mapped_column(String(200), nullable=False)
    # Last dense position handed out to an item of this group (positions are 1, 2, 3...).
    last_position: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    created_at: Mapped[datetime] = _now()


class GroupMember(Base):
    __tablename__ = "group_members"
    group_id: Mapped[int] = mapped_column(
        ForeignKey("groups.id", ondelete="CASCADE"), primary_key=True
    )
    user_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    joined_at: Mapped[datetime] = _now()
    __table_args__ = (Index("ix_group_members_user", "user_id", "group_id"),)


class FeedItem(Base):
    __tablename__ = "feed_items"
    id: Mapped[int] = _id()
    group_id: Mapped[int] = mapped_column(ForeignKey("groups.id", ondelete="CASCADE"))
    position: Mapped[int] = mapped_column(Integer, nullable=False)
    author_id: Mapped[int] = mapped_column(BigInteger, nullable=False)
    title: Mapped[str] = mapped_column(String(300), nullable=False)
    content_type: Mapped[str] = mapped_column(String(50), nullable=False)
    body: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = _now()
    deleted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    __table_args__ = (
        Index("uq_feed_items_group_position", "group_id", "position", unique=True),
        Index(
            "ix_feed_items_group_live",
            "group_id",
            "id",
            postgresql_where=text("deleted_at IS NULL"),
        ),
    )


class FeedItemView(Base):
    __tablename__ = "feed_item_views"
    item_id: Mapped[int] = mapped_column(
        ForeignKey("feed_items.id", ondelete="CASCADE"), primary_key=True
    )
    user_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    # Denormalised so one user's read state in one group is one index range.
    group_id: Mapped[int] = mapped_column(BigInteger, nullable=False)
    position: Mapped[int] = mapped_column(Integer, nullable=False)
    viewed_at: Mapped[datetime] = _now()
    __table_args__ = (
        Index("ix_feed_item_views_user_group", "user_id", "group_id", "position"),
        Index("ix_feed_item_views_item_time", "item_id", "viewed_at", "user_id"),
    )


# --- section 2: events and the activity feed ----------------------------------------------


class Event(Base):
    __tablename__ = "events"
    id: Mapped[int] = _id()
    user_id: Mapped[int] = mapped_column(BigInteger, nullable=False)
    event_type: Mapped[str] = mapped_column(String(50), nullable=False)
    title: Mapped[str] = mapped_column(String(300), nullable=False)
    description: Mapped[str | None] = mapped_column(Text)
    data: Mapped[dict | None] = mapped_column(JSONB)
    target_type: Mapped[str | None] = mapped_column(String(50))
    target_id: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = _now()
    __table_args__ = (Index("ix_events_user_time", "user_id", "created_at"),)


class Activity(Base):
    __tablename__ = "activities"
    id: Mapped[int] = _id()
    user_id: Mapped[int] = mapped_column(BigInteger, nullable=False)
    activity_type: Mapped[str] = mapped_column(String(50), nullable=False)
    title: Mapped[str] = mapped_column(String(300), nullable=False)
    description: Mapped[str | None] = mapped_column(Text)
    data: Mapped[dict | None] = mapped_column(JSONB)
    target_type: Mapped[str | None] = mapped_column(String(50))
    target_id: Mapped[int | None] = mapped_column(BigInteger)
    is_read: Mapped[bool] = mapped_column(Boolean, nullable=False, server_default="false")
    read_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = _now()
    # The event this item was made from; unique so a backfill never makes it twice.
    source_event_id: Mapped[int | None] = mapped_column(BigInteger, unique=True)
    __table_args__ = (
        Index("ix_activities_user_time", "user_id", "created_at", "id"),
        Index(
            "ix_activities_user_unread",
            "user_id",
            "created_at",
            postgresql_where=text("NOT is_read"),
        ),
        Index("ix_activities_type_time", "activity_type", "created_at"),
    )


class ActivityArchive(Base):
    __tablename__ = "activities_archive"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    user_id: Mapped[int] = mapped_column(BigInteger, nullable=False)
    activity_type: Mapped[str] = mapped_column(String(50), nullable=False)
    title: Mapped[str] = mapped_column(String(300), nullable=False)
    description: Mapped[str | None] = mapped_column(Text)
    data: Mapped[dict | None] = mapped_column(JSONB)
    target_type: Mapped[str | None] = mapped_column(String(50))
    target_id: Mapped[int | None] = mapped_column(BigInteger)
    is_read: Mapped[bool] = mapped_column(Boolean, nullable=False)
    read_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    source_event_id: Mapped[int | None] = mapped_column(BigInteger)
    archived_at: Mapped[datetime] = _now()
    __table_args__ = (
        Index("ix_activities_archive_user_time", "user_id", "created_at"),
        # "Never twice for one event": a backfill skips events whose item was archived.
        Index("ix_activities_archive_source_event", "source_event_id",
              postgresql_where=text("source_event_id IS NOT NULL")),
    )


# --- sections 3 and 4: posts, engagement, follows, collectives -----------------------------


class Collective(Base):
    __tablename__ = "collectives"
    id: Mapped[int] = _id()
    name: Mapped[str] = mapped_column(String(200), nullable=False)
    created_at: Mapped[datetime] = _now()


class CollectiveMember(Base):
    __tablename__ = "collective_members"
    collective_id: Mapped[int] = mapped_column(
        ForeignKey("collectives.id", ondelete="CASCADE"), primary_key=True
    )
    user_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    joined_at: Mapped[datetime] = _now()
    __table_args__ = (Index("ix_collective_members_user", "user_id", "collective_id"),)


class Post(Base):
    __tablename__ = "posts"
    id: Mapped[int] = _id()
    author_id: Mapped[int] = mapped_column(BigInteger, nullable=False)
    title: Mapped[str] = mapped_column(String(300), nullable=False)
    description: Mapped[str | None] = mapped_column(Text)
    tags: Mapped[list[str]] = mapped_column(
        ARRAY(String(50)), nullable=False, server_default="{}"
    )
    post_type: Mapped[str] = mapped_column(String(50), nullable=False, server_default="post")
    asset_type: Mapped[str | None] = mapped_column(String(50))
    asset_url: Mapped[str | None] = mapped_column(String(2000))
    collective_id: Mapped[int | None] = mapped_column(
        ForeignKey("collectives.id", ondelete="SET NULL")
    )
    show_prompt: Mapped[bool] = mapped_column(Boolean, nullable=False, server_default="false")
    prompt: Mapped[str | None] = mapped_column(Text)
    is_featured: Mapped[bool] = mapped_column(Boolean, nullable=False, server_default="false")
    inspired_by_post_id: Mapped[int | None] = mapped_column(
        ForeignKey("posts.id", ondelete="SET NULL")
    )
    # Counters follow committed row changes in the same transaction.
    like_count: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    comment_count: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    view_count: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    praise_count: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    trophy_count: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    # The personalized feed's engagement component (seed 003's PostScore), computed by
    # Postgres from the counters above in the statement that changes them (0008).
    engagement: Mapped[float] = mapped_column(Float, Computed(
        "LEAST((like_count + 2 * praise_count + 5 * trophy_count)::double precision "
        "+ 0.5 * comment_count::double precision, 50)", persisted=True))
    created_at: Mapped[datetime] = _now()
    updated_at: Mapped[datetime] = _now()
    deleted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    __table_args__ = (
        Index(
            "ix_posts_live_time", "created_at", "id", postgresql_where=text("deleted_at IS NULL")
        ),
        Index("ix_posts_author_time", "author_id", "created_at"),
        Index("ix_posts_collective_time", "collective_id", "created_at"),
        Index("ix_posts_tags", "tags", postgresql_using="gin",
              postgresql_with={"fastupdate": "off"}),
        Index("ix_posts_live_asset_time", "asset_type", "created_at", "id",
              postgresql_where=text("deleted_at IS NULL")),
        # The personalized feed's per-fellow and per-collective candidate sources (0010).
        Index("ix_posts_live_author_created", "author_id", "created_at", "id",
              postgresql_where=text("deleted_at IS NULL")),
        Index("ix_posts_live_collective_created", "collective_id", "created_at", "id",
              postgresql_where=text("deleted_at IS NULL AND collective_id IS NOT NULL")),
    )


class _PostUserFact:
    """A (post, user) fact: a like (= a heart), a praise or a trophy; one per pair."""

    post_id: Mapped[int] = mapped_column(
        ForeignKey("posts.id", ondelete="CASCADE"), primary_key=True
    )
    user_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    created_at: Mapped[datetime] = _now()

    @declared_attr.directive
    def __table_args__(cls) -> tuple:
        return (Index(f"ix_{cls.__tablename__}_user", "user_id", "post_id"),)


class PostLike(_PostUserFact, Base):
    __tablename__ = "post_likes"


class PostPraise(_PostUserFact, Base):
    __tablename__ = "post_praises"


class PostTrophy(_PostUserFact, Base):
    __tablename__ = "post_trophies"


class Comment(Base):
    __tablename__ = "comments"
    id: Mapped[int] = _id()
    post_id: Mapped[int] = mapped_column(ForeignKey("posts.id", ondelete="CASCADE"))
    author_id: Mapped[int] = mapped_column(BigInteger, nullable=False)
    body: Mapped[str] = mapped_column(Text, nullable=False)
    created_at: Mapped[datetime] = _now()
    __table_args__ = (Index("ix_comments_post_time", "post_id", "created_at"),)


class PostView(Base):
    """Last counted view per (post, viewer): debounces views and marks posts as seen."""

    __tablename__ = "post_views"
    post_id: Mapped[int] = mapped_column(
        ForeignKey("posts.id", ondelete="CASCADE"), primary_key=True
    )
    viewer_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    counted_at: Mapped[datetime] = _now()
    __table_args__ = (Index("ix_post_views_viewer", "viewer_id", "post_id"),)


class Follow(Base):
    __tablename__ = "follows"
    follower_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    followee_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    created_at: Mapped[datetime] = _now()
    __table_args__ = (
        CheckConstraint("follower_id <> followee_id", name="not_self"),
        Index("ix_follows_followee", "followee_id", "follower_id"),
    )


class Fellow(Base):
    """Mutual fellowship, stored in both directions."""

    __tablename__ = "fellows"
    user_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    fellow_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    created_at: Mapped[datetime] = _now()
    __table_args__ = (CheckConstraint("user_id <> fellow_id", name="not_self"),)


class TrendingSnapshot(Base):
    """A trending walk's ranking, frozen when the walk starts (community feed, section 3).

    ``post_ids`` and ``scores`` are parallel arrays in rank order (score desc, id desc):
    the trending set (the window plus the best older posts, see cache/community_feed.py),
    scores computed at ``ref_time``. ``floor_score, floor_id``: the key below which the
    arrays no longer hold every post (None: they hold every post); a walk past it reads
    the deep tail (``TrendingSnapshotTail``), written once on first need
    (``tail_ready``). Immutable otherwise; Redis holds a copy of the arrays; the trending
    job deletes rows older than ``TRENDING_SNAPSHOT_TTL`` and their tails.
    """

    __tablename__ = "trending_snapshots"
    id: Mapped[int] = _id()
    created_at: Mapped[datetime] = _now()
    ref_time: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    post_ids: Mapped[list[int]] = mapped_column(ARRAY(BigInteger), nullable=False)
    scores: Mapped[list[int]] = mapped_column(ARRAY(BigInteger), nullable=False)
    floor_score: Mapped[int | None] = mapped_column(BigInteger)
    floor_id: Mapped[int | None] = mapped_column(BigInteger)
    tail_ready: Mapped[bool] = mapped_column(Boolean, nullable=False, server_default="false")
    __table_args__ = (
        CheckConstraint("cardinality(post_ids) = cardinality(scores)", name="parallel"),
        Index("ix_trending_snapshots_created", "created_at"),
    )


class TrendingSnapshotTail(Base):
    """The deep part of a trending snapshot: every post below its floor, with its score
    frozen when the tail was written (keyset pages on ``(score, post_id)`` desc). No
    foreign key (its per-row check slowed the write): deleted with its snapshot by
    ``storage.community_feed.delete_snapshots_older_than``."""

    __tablename__ = "trending_snapshot_tails"
    snapshot_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    score: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    post_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)


class UserPreferences(Base):
    __tablename__ = "user_preferences"
    user_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    preferred_post_types: Mapped[list[str]] = mapped_column(
        ARRAY(String(50)), nullable=False, server_default="{}"
    )
    # Stored and returned (seed 003's UserPreference); no score component uses it yet.
    preferred_artist_types: Mapped[list[str]] = mapped_column(
        ARRAY(String(50)), nullable=False, server_default="{}"
    )
    muted_collectives: Mapped[list[int]] = mapped_column(
        ARRAY(BigInteger), nullable=False, server_default="{}"
    )
    blocked_users: Mapped[list[int]] = mapped_column(
        ARRAY(BigInteger), nullable=False, server_default="{}"
    )
    updated_at: Mapped[datetime] = _now()


class UserPostPreference(Base):
    """Seed 003's UserPostPreference: a viewer's hearts, praise and trophies on one
    author's posts of one type. Kept by triggers on the fact tables in the writing
    transaction (migration 0008); read by the personalized feed's interaction and post
    type components."""

    __tablename__ = "user_post_preferences"
    user_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    author_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    post_type: Mapped[str] = mapped_column(String(50), primary_key=True)
    hearts: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    praises: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    trophies: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")


class RankingConfig(Base):
    """The admin's personalized-ranking controls (at most one row, id 1).

    No row: ranking enabled, weights from ``RANKING_WEIGHTS``. ``weights`` holds only the
    weights an admin set (the others keep following the configuration). Cache version:
    ``cache_versions`` row ``rank|config`` (``cache.ranked_feed.config_scope``).
    """

    __tablename__ = "ranking_config"
    id: Mapped[int] = mapped_column(SmallInteger, primary_key=True, autoincrement=False)
    enabled: Mapped[bool] = mapped_column(Boolean, nullable=False, server_default="true")
    weights: Mapped[dict] = mapped_column(JSONB, nullable=False,
                                          server_default=text("'{}'::jsonb"))
    updated_at: Mapped[datetime] = _now()
    __table_args__ = (CheckConstraint("id = 1", name="single_row"),)


# --- section 5: reels --------------------------------------------------------------------


class Reel(Base):
    __tablename__ = "reels"
    id: Mapped[int] = _id()
    video_url: Mapped[str] = mapped_column(String(2000), nullable=False)
    description: Mapped[str | None] = mapped_column(Text)
    duration: Mapped[int] = mapped_column(Integer, nullable=False)
    is_available: Mapped[bool] = mapped_column(Boolean, nullable=False, server_default="true")
    likes_count: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    views_count: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default="0")
    created_at: Mapped[datetime] = _now()
    __table_args__ = (CheckConstraint("duration > 0", name="duration_positive"),)


class ReelView(Base):
    """One row per (user, reel): the latest view. Kept to the newest N per user."""

    __tablename__ = "reel_views"
    user_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    reel_id: Mapped[int] = mapped_column(
        ForeignKey("reels.id", ondelete="CASCADE"), primary_key=True
    )
    viewed_at: Mapped[datetime] = _now()
    view_duration: Mapped[int | None] = mapped_column(Integer)  # seconds; null: never sent
    __table_args__ = (Index("ix_reel_views_user_time", "user_id", "viewed_at", "reel_id"),)


class ReelLike(Base):
    __tablename__ = "reel_likes"
    reel_id: Mapped[int] = mapped_column(
        ForeignKey("reels.id", ondelete="CASCADE"), primary_key=True
    )
    user_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    created_at: Mapped[datetime] = _now()
    __table_args__ = (Index("ix_reel_likes_user", "user_id", "reel_id"),)


# --- cache core --------------------------------------------------------------------------


class CacheVersion(Base):
    """The truth of every cache version: Redis holds copies, never the original.

    ``name`` is a version scope such as ``rs:42:7`` (read state of user 42 in group 7).
    """

    __tablename__ = "cache_versions"
    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    version: Mapped[int] = mapped_column(BigInteger, nullable=False)


class OutboxEntry(Base):
    """Cache changes committed with the data; the outbox relay applies them (again) and
    deletes them once they are ``OUTBOX_MIN_AGE`` old."""

    __tablename__ = "cache_outbox"
    id: Mapped[int] = _id()
    changes: Mapped[list] = mapped_column(JSONB, nullable=False)
    created_at: Mapped[datetime] = _now()
