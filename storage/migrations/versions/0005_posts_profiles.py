"""seed 002's post shape and profiles: posts.updated_at / inspired_by_post_id, and the
profile columns of users (avatar_url, subscription_tier, updated_at)

A user's profile is their ``users`` row (``display_name`` was already there, and every
feed already joins it); a user without a row shows seed 002's defaults.

Revision ID: 0005_posts_profiles
Revises: 0004_reel_view_duration_nullable
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_posts_profiles"
down_revision: str | Sequence[str] | None = "0004_reel_view_duration_nullable"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "posts",
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"),
                  nullable=False),
    )
    op.execute("UPDATE posts SET updated_at = created_at")
    op.add_column("posts", sa.Column("inspired_by_post_id", sa.BigInteger(), nullable=True))
    op.create_foreign_key(
        op.f("fk_posts_inspired_by_post_id_posts"), "posts", "posts",
        ["inspired_by_post_id"], ["id"], ondelete="SET NULL",
    )
    op.add_column("users", sa.Column("avatar_url", sa.String(length=2048), nullable=True))
    op.add_column(
        "users",
        sa.Column("subscription_tier", sa.String(length=10), server_default="free",
                  nullable=False),
    )
    op.create_check_constraint(
        op.f("ck_users_tier"), "users", "subscription_tier IN ('free', 'plus', 'pro')"
    )
    op.add_column(
        "users",
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"),
                  nullable=False),
    )


def downgrade() -> None:
    op.drop_column("users", "updated_at")
    op.drop_constraint(op.f("ck_users_tier"), "users", type_="check")
    op.drop_column("users", "subscription_tier")
    op.drop_column("users", "avatar_url")
    op.drop_constraint(op.f("fk_posts_inspired_by_post_id_posts"), "posts", type_="foreignkey")
    op.drop_column("posts", "inspired_by_post_id")
    op.drop_column("posts", "updated_at")
