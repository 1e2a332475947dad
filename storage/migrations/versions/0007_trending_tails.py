"""community feed: trending walks reach every post (a snapshot's floor and deep tail)

Revision ID: 0007_trending_tails
Revises: 0006_ranking_controls
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007_trending_tails"
down_revision: str | None = "0006_ranking_controls"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("trending_snapshots", sa.Column("floor_score", sa.BigInteger()))
    op.add_column("trending_snapshots", sa.Column("floor_id", sa.BigInteger()))
    op.add_column("trending_snapshots", sa.Column(
        "tail_ready", sa.Boolean(), server_default=sa.text("false"), nullable=False))
    op.create_table(
        "trending_snapshot_tails",
        sa.Column("snapshot_id", sa.BigInteger(), nullable=False),
        sa.Column("score", sa.BigInteger(), nullable=False),
        sa.Column("post_id", sa.BigInteger(), nullable=False),
        # No foreign key: its check per inserted row cost a third of a tail's write; the
        # trending job deletes a snapshot's tail with the snapshot.
        sa.PrimaryKeyConstraint("snapshot_id", "score", "post_id",
                                name=op.f("pk_trending_snapshot_tails")),
    )


def downgrade() -> None:
    op.drop_table("trending_snapshot_tails")
    op.drop_column("trending_snapshots", "tail_ready")
    op.drop_column("trending_snapshots", "floor_id")
    op.drop_column("trending_snapshots", "floor_score")
