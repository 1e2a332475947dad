"""merge the two section branches into one head

Revision ID: 0003_merge_heads
Revises: 0002_activity_feed, 0002_community_feed
"""

from collections.abc import Sequence

revision: str = "0003_merge_heads"
down_revision: str | Sequence[str] | None = ("0002_activity_feed", "0002_community_feed")
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
