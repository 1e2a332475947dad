"""community feed: durable trending snapshots (a walk's ranking survives a lost cache)

Revision ID: 0002_community_feed
Revises: 0001
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002_community_feed"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "trending_snapshots",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("ref_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("post_ids", postgresql.ARRAY(sa.BigInteger()), nullable=False),
        sa.Column("scores", postgresql.ARRAY(sa.BigInteger()), nullable=False),
        sa.CheckConstraint(
            "cardinality(post_ids) = cardinality(scores)",
            name=op.f("ck_trending_snapshots_parallel"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_trending_snapshots")),
    )
    op.create_index(
        "ix_trending_snapshots_created", "trending_snapshots", ["created_at"], unique=False
    )


def downgrade() -> None:
    op.drop_index("ix_trending_snapshots_created", table_name="trending_snapshots")
    op.drop_table("trending_snapshots")
