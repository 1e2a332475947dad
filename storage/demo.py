"""Demo data for every API section, bulk-loaded with COPY, reproducible from a seed.

Writes Postgres only: callers clear the cache keyspace afterwards (``seed`` in the CLI
does), since cached state no longer matches.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import text
from sqlalchemy.orm import Session
from tqdm import tqdm

from storage.db import Database

POST_TYPES = ("post", "prayer", "testimony", "question")
ASSET_TYPES = (None, "image", "video", "audio")
TAGS = ("faith", "fasting", "family", "music", "study", "news", "prayer")
ACTIVITY_TYPES = (
    "event", "fast_start", "fast_join", "fast_leave", "devotional_available", "milestone",
    "fast_reminder", "devotional_reminder",
)


@dataclass
class DemoSizes:
    users: int = 200
    groups: int = 10
    items: int = 2_000
    posts: int = 2_000
    reels: int = 300
    views: int = 10_000
    seed: int = 42


# Every table the demo fills with ids of its own: data in any of them (made through the API,
# say) would collide with the demo's ids and dense positions.
_SEEDED_TABLES = ("users", "groups", "feed_items", "events", "activities", "posts", "reels",
                  "collectives")


def has_data(session: Session) -> bool:
    """True if any table the demo fills already has a row."""
    exists = " OR ".join(f"EXISTS (SELECT 1 FROM {t})" for t in _SEEDED_TABLES)
    return bool(session.execute(text(f"SELECT {exists}")).scalar_one())


def _copy(cursor, table: str, columns: tuple[str, ...], rows, bar: tqdm) -> int:
    n = 0
    with cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row)
            n += 1
            if n % 1000 == 0:
                bar.update(1000)
    bar.update(n % 1000)
    return n


def seed(db: Database, sizes: DemoSizes, progress: bool = False) -> dict[str, int]:
    """Insert demo data; returns row counts per table. Raises on a non-empty schema clash."""
    rng = random.Random(sizes.seed)
    now = datetime.now(UTC)
    total = (sizes.users * 3 + sizes.items + sizes.posts * 3 + sizes.reels + sizes.views * 2)
    bar = tqdm(total=total, disable=not progress, unit="rows", desc="seeding")
    counts: dict[str, int] = {}
    users = range(1, sizes.users + 1)
    raw = db.engine.raw_connection()
    try:
        cur = raw.cursor()

        def ago(max_hours: float) -> datetime:
            return now - timedelta(hours=rng.random() * max_hours)

        counts["users"] = _copy(cur, "users", ("id", "display_name", "created_at"),
                                ((u, f"User {u}", ago(24 * 90)) for u in users), bar)
        cur.execute(
            "INSERT INTO groups (name, last_position) "
            "SELECT 'Group ' || g, 0 FROM generate_series(1, %s) g RETURNING id",
            (sizes.groups,),
        )
        group_ids = [r[0] for r in cur.fetchall()]
        members = {g: rng.sample(list(users), k=max(1, min(len(users), rng.randint(5, 60))))
                   for g in group_ids}
        counts["group_members"] = _copy(
            cur, "group_members", ("group_id", "user_id"),
            ((g, u) for g, us in members.items() for u in us), bar)
        positions = dict.fromkeys(group_ids, 0)
        items = []
        for _ in range(sizes.items):
            g = rng.choice(group_ids)
            positions[g] += 1
            items.append((g, positions[g], rng.choice(members[g]), f"Item {positions[g]}",
                          rng.choice(("text", "image", "link"))))
        items.sort(key=lambda r: r[1])  # older positions first -> ids follow positions
        counts["feed_items"] = _copy(
            cur, "feed_items", ("group_id", "position", "author_id", "title", "content_type"),
            items, bar)
        for g, last in positions.items():
            cur.execute("UPDATE groups SET last_position = %s WHERE id = %s", (last, g))
        cur.execute("SELECT id, group_id, position FROM feed_items")
        by_group: dict[int, list[tuple[int, int]]] = {}
        for item_id, g, pos in cur.fetchall():
            by_group.setdefault(g, []).append((item_id, pos))
        views = set()
        for g, its in by_group.items():
            for u in members[g]:
                for item_id, pos in rng.sample(its, k=len(its) // 10):
                    views.add((item_id, u, g, pos))
        counts["feed_item_views"] = _copy(
            cur, "feed_item_views", ("item_id", "user_id", "group_id", "position"), views, bar)
        counts["activities"] = _copy(
            cur, "activities", ("user_id", "activity_type", "title", "is_read", "created_at"),
            ((u, rng.choice(ACTIVITY_TYPES), "Demo activity", rng.random() < 0.5, ago(24 * 30))
             for u in users for _ in range(rng.randint(1, 10))), bar)
        cur.execute("INSERT INTO collectives (name) SELECT 'Collective ' || c "
                    "FROM generate_series(1, 8) c RETURNING id")
        collective_ids = [r[0] for r in cur.fetchall()]
        _copy(cur, "collective_members", ("collective_id", "user_id"),
              {(rng.choice(collective_ids), u) for u in users for _ in range(2)}, bar)
        counts["posts"] = _copy(
            cur, "posts",
            ("author_id", "title", "tags", "post_type", "asset_type", "collective_id",
             "is_featured", "created_at"),
            ((rng.choice(users), f"Post {i}", rng.sample(TAGS, k=rng.randint(0, 3)),
              rng.choice(POST_TYPES), rng.choice(ASSET_TYPES),
              rng.choice(collective_ids) if rng.random() < 0.3 else None,
              rng.random() < 0.02, ago(24 * 14)) for i in range(sizes.posts)), bar)
        cur.execute("SELECT id FROM posts")
        post_ids = [r[0] for r in cur.fetchall()]
        likes = {(rng.choice(post_ids[: max(1, len(post_ids) // 5)] if rng.random() < 0.7
                             else post_ids), rng.choice(users))
                 for _ in range(sizes.posts * 2)} if post_ids else set()
        counts["post_likes"] = _copy(cur, "post_likes", ("post_id", "user_id"), likes, bar)
        cur.execute("UPDATE posts p SET like_count = l.n FROM "
                    "(SELECT post_id, count(*) n FROM post_likes GROUP BY post_id) l "
                    "WHERE l.post_id = p.id")
        counts["follows"] = _copy(
            cur, "follows", ("follower_id", "followee_id"),
            {(a, b) for a in users for b in rng.sample(list(users), k=min(5, len(users)))
             if a != b}, bar)
        counts["reels"] = _copy(
            cur, "reels", ("video_url", "description", "duration", "is_available"),
            ((f"https://cdn.example/reels/{i}.mp4", f"Reel {i}", rng.randint(5, 90),
              rng.random() < 0.95) for i in range(sizes.reels)), bar)
        cur.execute("SELECT id, duration FROM reels")
        reels = cur.fetchall()
        reel_views: dict[tuple[int, int], tuple] = {}
        for _ in range(sizes.views if reels else 0):
            u = rng.choice(users)
            reel_id, duration = rng.choice(reels)
            reel_views[(u, reel_id)] = (u, reel_id, ago(24 * 30), rng.randint(0, duration))
        per_user: dict[int, list[tuple]] = {}
        for row in reel_views.values():
            per_user.setdefault(row[0], []).append(row)
        kept = [r for rows in per_user.values()
                for r in sorted(rows, key=lambda r: r[2], reverse=True)[:50]]
        counts["reel_views"] = _copy(
            cur, "reel_views", ("user_id", "reel_id", "viewed_at", "view_duration"), kept, bar)
        cur.execute("UPDATE reels r SET views_count = v.n FROM "
                    "(SELECT reel_id, count(*) n FROM reel_views GROUP BY reel_id) v "
                    "WHERE v.reel_id = r.id")
        raw.commit()
    finally:
        raw.close()
        bar.close()
    return counts
