"""SQL of the community feed's trending window (the rest of its queries are the shared
post queries in ``storage.posts``)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from storage.models import Post
from storage.posts import Engagement


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
