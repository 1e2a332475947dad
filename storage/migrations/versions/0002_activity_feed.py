"""activity feed: index archived items by source event (backfill never recreates them)

Revision ID: 0002_activity_feed
Revises: 0001
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002_activity_feed"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "ix_activities_archive_source_event",
        "activities_archive",
        ["source_event_id"],
        unique=False,
        postgresql_where=sa.text("source_event_id IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_activities_archive_source_event", table_name="activities_archive")
