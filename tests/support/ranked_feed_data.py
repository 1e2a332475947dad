"""Test data and an independent oracle for the personalized feed tests.

``generate`` writes a random but reproducible world straight into Postgres (users, posts,
collectives, hearts, praise, trophies, comments, views, fellows, memberships), with the
counters on ``posts`` derived from the fact rows. ``oracle_order`` recomputes API.md's
formula in plain Python from the fact rows themselves (never from the counters or from the
service's code), so the tests compare the service against the specification.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import text

POST_TYPES = ("post", "prayer", "testimony", "question")
FROZEN_NOW = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)


@dataclass
class World:
    users: list[int]
    collectives: list[int]
    posts: list[int]


def _insert(session, table: str, rows: list[dict]) -> None:
    if rows:
        cols = list(rows[0])
        session.execute(
            text(f"INSERT INTO {table} ({', '.join(cols)}) VALUES "
                 f"({', '.join(':' + c for c in cols)}) ON CONFLICT DO NOTHING"),
            rows,
        )


def generate(state, n_users: int = 60, n_posts: int = 300, n_collectives: int = 8,
             seed: int = 7, now: datetime = FROZEN_NOW) -> World:
    rng = random.Random(seed)
    users = list(range(1000, 1000 + n_users))
    with state.db.session() as s:
        _insert(s, "users", [{"id": u, "display_name": f"Person {u}"} for u in users])
        collectives = [
            s.execute(text("INSERT INTO collectives (name) VALUES (:n) RETURNING id"),
                      {"n": f"C{i}"}).scalar_one()
            for i in range(n_collectives)
        ]
        posts = []
        for i in range(n_posts):
            created = now - timedelta(minutes=rng.randint(1, 14 * 24 * 60))
            if i % 37 == 0:  # a few exact timestamp ties
                created = now - timedelta(hours=5)
            posts.append(s.execute(text(
                "INSERT INTO posts (author_id, title, post_type, collective_id, created_at, "
                "is_featured, deleted_at) VALUES (:a, :t, :pt, :c, :ca, :f, :d) RETURNING id"
            ), {
                "a": rng.choice(users), "t": f"Post {i}", "pt": rng.choice(POST_TYPES),
                "c": rng.choice(collectives) if rng.random() < 0.4 else None,
                "ca": created, "f": rng.random() < 0.05,
                "d": now - timedelta(hours=1) if rng.random() < 0.05 else None,
            }).scalar_one())
        for table, per_user in (("post_likes", 12), ("post_praises", 4), ("post_trophies", 2)):
            _insert(s, table, [{"post_id": rng.choice(posts), "user_id": u}
                               for u in users for _ in range(rng.randint(0, per_user))])
        _insert(s, "comments", [{"post_id": rng.choice(posts), "author_id": rng.choice(users),
                                 "body": "c"} for _ in range(n_posts)])
        _insert(s, "post_views", [{"post_id": rng.choice(posts), "viewer_id": u}
                                  for u in users for _ in range(rng.randint(0, 10))])
        fellows = []
        for u in users:
            for f in rng.sample(users, 3):
                if f != u:
                    fellows += [{"user_id": u, "fellow_id": f}, {"user_id": f, "fellow_id": u}]
        _insert(s, "fellows", fellows)
        _insert(s, "collective_members", [
            {"collective_id": c, "user_id": u}
            for u in users for c in rng.sample(collectives, rng.randint(0, 3))])
        s.execute(text(
            "UPDATE posts p SET "
            "like_count = (SELECT count(*) FROM post_likes x WHERE x.post_id = p.id), "
            "praise_count = (SELECT count(*) FROM post_praises x WHERE x.post_id = p.id), "
            "trophy_count = (SELECT count(*) FROM post_trophies x WHERE x.post_id = p.id), "
            "comment_count = (SELECT count(*) FROM comments x WHERE x.post_id = p.id)"))
        s.commit()
    return World(users, collectives, posts)


def set_preferences(state, user_id: int, types=(), muted=(), blocked=()) -> None:
    with state.db.session() as s:
        s.execute(text(
            "INSERT INTO user_preferences (user_id, preferred_post_types, muted_collectives, "
            "blocked_users) VALUES (:u, :t, :m, :b) ON CONFLICT (user_id) DO UPDATE SET "
            "preferred_post_types = :t, muted_collectives = :m, blocked_users = :b"),
            {"u": user_id, "t": list(types), "m": list(muted), "b": list(blocked)})
        s.commit()


def oracle_order(state, viewer: int, now: datetime = FROZEN_NOW,
                 weights: dict[str, float] | None = None) -> list[tuple[int, float]]:
    """API.md's personalized order over every visible live post, from the fact rows."""
    w = weights or {"recency": 0.15, "social": 0.25, "interaction": 0.20,
                    "engagement": 0.15, "collective": 0.15, "post_type": 0.10}
    with state.db.session() as s:
        def q(sql: str, **params):
            return s.execute(text(sql), {"v": viewer, **params}).all()

        posts = q("SELECT id, author_id, post_type, collective_id, created_at FROM posts "
                  "WHERE deleted_at IS NULL")
        counts = {}
        for table in ("post_likes", "post_praises", "post_trophies"):
            counts[table] = dict(q(f"SELECT post_id, count(*) FROM {table} GROUP BY post_id"))
        comments = dict(q("SELECT post_id, count(*) FROM comments GROUP BY post_id"))
        fellows = {r[0] for r in q("SELECT fellow_id FROM fellows WHERE user_id = :v")}
        joined = {r[0] for r in q(
            "SELECT collective_id FROM collective_members WHERE user_id = :v")}
        mine = q("SELECT p.author_id, p.post_type FROM posts p JOIN ("
                 "SELECT post_id FROM post_likes WHERE user_id = :v UNION ALL "
                 "SELECT post_id FROM post_praises WHERE user_id = :v UNION ALL "
                 "SELECT post_id FROM post_trophies WHERE user_id = :v) f ON f.post_id = p.id")
        viewed = {r[0] for r in q("SELECT post_id FROM post_views WHERE viewer_id = :v")}
        prefs = q("SELECT preferred_post_types, muted_collectives, blocked_users "
                  "FROM user_preferences WHERE user_id = :v")
    preferred, muted, blocked = (set(x) for x in prefs[0]) if prefs else (set(), set(), set())
    per_author: dict[int, int] = {}
    per_type: dict[str, int] = {}
    for author, ptype in mine:
        per_author[author] = per_author.get(author, 0) + 1
        per_type[ptype] = per_type.get(ptype, 0) + 1
    top3 = sorted(per_type, key=lambda t: (-per_type[t], t))[:3]
    scored = []
    for pid, author, ptype, coll, created in posts:
        if author in blocked or (coll is not None and coll in muted):
            continue
        if coll is not None and coll not in joined:
            continue  # a collective's posts are for its members
        hours = max((now - created).total_seconds() / 3600, 0)
        parts = {
            "recency": 100 * math.exp(-hours / 24),
            "social": 50 if author in fellows else 0,
            "interaction": min(5 * per_author.get(author, 0), 40),
            "engagement": min(counts["post_likes"].get(pid, 0)
                              + 2 * counts["post_praises"].get(pid, 0)
                              + 5 * counts["post_trophies"].get(pid, 0)
                              + 0.5 * comments.get(pid, 0), 50),
            "collective": 30 if coll is not None and coll in joined else 0,
            "post_type": 10 * per_type[ptype] if ptype in top3 else 0,
        }
        if ptype in preferred:
            parts["post_type"] = max(parts["post_type"], 10)
        score = sum(w[k] * parts[k] for k in
                    ("recency", "social", "interaction", "engagement", "collective",
                     "post_type"))
        if pid in viewed:
            score *= 0.5
        scored.append((-score, -created.timestamp(), -pid, pid, score))
    scored.sort()
    return [(pid, score) for *_, pid, score in scored]
