"""The benchmark's data set: bench-sized, skewed, reproducible from a seed, loaded with COPY.

Same approach as ``storage/demo.py`` (COPY, a seeded ``random.Random``, a tqdm bar), at the
sizes of issue 7 and with the skew a real app has: a few posts collect most likes, a few
authors most followers, a few reels most views. ``BenchSizes().scaled(f)`` multiplies
every size (``--scale``).

Ids are given explicitly and ascend with creation time (as they would in production), and
each table's sequence is moved past them, so the service can insert after the load.

Writes Postgres only; ``scripts/bench`` clears the cache keyspace before each config.
"""

from __future__ import annotations

import bisect
import dataclasses
import hashlib
import itertools
import json
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
from tqdm import tqdm

from storage.demo import ACTIVITY_TYPES, ASSET_TYPES, POST_TYPES, TAGS

# Bump when the generator's output changes in a way the sizes do not show.
GENERATOR_VERSION = 1
# API.md section 5: only the newest MAX_RECENT_REEL_VIEWS (default 50) per user are kept.
MAX_RECENT_REEL_VIEWS = 50


@dataclass(frozen=True)
class BenchSizes:
    """Row counts of the data set. Defaults are issue 7's, sized for a 2-core machine."""

    users: int = 10_000
    groups: int = 200
    min_members: int = 50  # per group (capped at users)
    max_members: int = 500
    items: int = 200_000  # group feed items
    item_views: int = 1_000_000  # recorded views of group feed items (tracked views)
    posts: int = 100_000
    likes: int = 300_000  # likes (= hearts) drawn from a skewed post popularity
    comments: int = 50_000
    post_views: int = 200_000
    collectives: int = 50
    follows_per_user: int = 20
    fellows_per_user: int = 5
    activities_per_user: int = 20  # mean
    reels: int = 5_000
    reel_views: int = 1_000_000  # recorded reel view events (<= 50 per user are kept)
    reel_likes: int = 100_000
    seed: int = 42

    def scaled(self, factor: float) -> BenchSizes:
        """Every count times ``factor`` (per-user means and member bounds stay, but never
        above the number of users)."""

        def s(n: int, floor: int) -> int:
            return max(floor, round(n * factor))

        users = s(self.users, 20)
        return dataclasses.replace(
            self,
            users=users,
            groups=s(self.groups, 2),
            min_members=min(self.min_members, max(2, users // 4)),
            max_members=min(self.max_members, max(3, users // 2)),
            items=s(self.items, 20),
            item_views=s(self.item_views, 50),
            posts=s(self.posts, 50),
            likes=s(self.likes, 50),
            comments=s(self.comments, 10),
            post_views=s(self.post_views, 50),
            collectives=s(self.collectives, 2),
            follows_per_user=min(self.follows_per_user, users - 1),
            fellows_per_user=min(self.fellows_per_user, users - 1),
            reels=s(self.reels, 10),
            reel_views=s(self.reel_views, 50),
            reel_likes=s(self.reel_likes, 20),
        )

    def estimated_rows(self) -> int:
        members = self.groups * (self.min_members + self.max_members) // 2
        return (
            self.users * (3 + self.activities_per_user + self.follows_per_user)
            + members + self.items + self.item_views + self.posts + self.likes * 14 // 10
            + self.comments + self.post_views + self.reels + self.reel_views // 2
            + self.reel_likes
        )


def fingerprint(sizes: BenchSizes, schema_heads: Sequence[str]) -> str:
    """Changes whenever the data would: sizes, seed, schema revision, this generator."""
    source = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]
    payload = json.dumps(
        {"sizes": dataclasses.asdict(sizes), "schema": sorted(schema_heads),
         "generator": GENERATOR_VERSION, "source": source},
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


class _Loader:
    """COPY helper counting rows into one progress bar."""

    def __init__(self, conn: psycopg.Connection, bar: tqdm) -> None:
        self.conn = conn
        self.bar = bar
        self.counts: dict[str, int] = {}

    def copy(self, table: str, columns: Sequence[str], rows: Iterable[Sequence]) -> int:
        n = 0
        with self.conn.cursor() as cur, cur.copy(
            f"COPY {table} ({', '.join(columns)}) FROM STDIN"
        ) as copy:
            for row in rows:
                copy.write_row(row)
                n += 1
                if n % 5000 == 0:
                    self.bar.update(5000)
        self.bar.update(n % 5000)
        self.counts[table] = self.counts.get(table, 0) + n
        return n

    def execute(self, sql: str, params: Sequence | None = None) -> None:
        self.conn.execute(sql, params)


def _zipf_cum_weights(n: int, exponent: float) -> list[float]:
    """Cumulative weights of ranks 1..n for ``random.choices``: rank r ~ 1 / r^exponent."""
    return list(itertools.accumulate(1.0 / (r ** exponent) for r in range(1, n + 1)))


def generate(conninfo: str, sizes: BenchSizes, progress: bool = True) -> dict[str, int]:
    """Load the data set into the (migrated, empty) database at ``conninfo`` (a libpq
    URL). Returns row counts per table. Raises psycopg errors (e.g. a non-empty table)."""
    rng = random.Random(sizes.seed)
    now = datetime.now(UTC).replace(microsecond=0)
    bar = tqdm(total=sizes.estimated_rows(), disable=not progress, unit="rows",
               desc="generating bench data", unit_scale=True)
    with psycopg.connect(conninfo) as conn:
        load = _Loader(conn, bar)
        users = list(range(1, sizes.users + 1))
        load.copy("users", ("id", "display_name", "created_at"),
                  ((u, f"User {u}", now - timedelta(days=90 + rng.random() * 300))
                   for u in users))
        _groups_and_items(load, rng, sizes, users, now)
        _activities(load, rng, sizes, users, now)
        _posts(load, rng, sizes, users, now)
        _reels(load, rng, sizes, users, now)
        for table in ("groups", "feed_items", "collectives", "posts", "reels", "activities",
                      "comments"):
            load.execute(
                f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                f"(SELECT COALESCE(max(id), 0) + 1 FROM {table}), false)"
            )
        load.counts.pop("bench_reel_counts", None)
        conn.commit()
    bar.close()
    return load.counts


def _groups_and_items(load: _Loader, rng: random.Random, sizes: BenchSizes,
                      users: list[int], now: datetime) -> int:
    """Groups of min..max members, items spread by group size, and recorded views: half
    the memberships read a prefix (up to a watermark), half read scattered items."""
    groups = list(range(1, sizes.groups + 1))
    members = {g: rng.sample(users, k=min(len(users), rng.randint(sizes.min_members,
                                                                   sizes.max_members)))
               for g in groups}
    load.execute("INSERT INTO groups (id, name, last_position) SELECT g, 'Group ' || g, 0 "
                 "FROM generate_series(1, %s) g", (sizes.groups,))
    n_members = load.copy("group_members", ("group_id", "user_id"),
                          ((g, u) for g in groups for u in members[g]))
    # Bigger groups post more; ids ascend with created_at.
    cum = list(itertools.accumulate(len(members[g]) for g in groups))
    item_groups = rng.choices(groups, cum_weights=cum, k=sizes.items)
    span = timedelta(days=30).total_seconds()
    positions = dict.fromkeys(groups, 0)
    by_group: dict[int, list[tuple[int, datetime]]] = {g: [] for g in groups}
    rows = []
    for i, g in enumerate(item_groups, start=1):
        positions[g] += 1
        created = now - timedelta(seconds=span * (1 - i / sizes.items))
        by_group[g].append((i, created))
        deleted = created + timedelta(hours=1) if rng.random() < 0.01 else None
        rows.append((i, g, positions[g], rng.choice(members[g]), f"Item {positions[g]}",
                     rng.choice(("text", "image", "link")), created, deleted))
    load.copy("feed_items", ("id", "group_id", "position", "author_id", "title",
                             "content_type", "created_at", "deleted_at"), rows)
    load.execute("UPDATE groups g SET last_position = f.n FROM (SELECT group_id, max(position) n "
                 "FROM feed_items GROUP BY group_id) f WHERE f.group_id = g.id")
    mean = sizes.item_views / max(1, n_members)

    def views():
        for g in groups:
            its = by_group[g]
            for u in members[g]:
                k = min(len(its), round(rng.expovariate(1 / mean)) if mean > 0 else 0)
                if not k:
                    continue
                picks = range(k) if rng.random() < 0.5 else rng.sample(range(len(its)), k)
                for p in picks:
                    item_id, created = its[p]
                    yield (item_id, u, g, p + 1, created + timedelta(minutes=rng.random() * 600))

    load.copy("feed_item_views", ("item_id", "user_id", "group_id", "position", "viewed_at"),
              views())
    return n_members


def _activities(load: _Loader, rng: random.Random, sizes: BenchSizes, users: list[int],
                now: datetime) -> None:
    def rows():
        for u in users:
            for _ in range(rng.randint(1, 2 * sizes.activities_per_user - 1)):
                created = now - timedelta(hours=rng.random() * 24 * 30)
                read = rng.random() < 0.6
                yield (u, rng.choice(ACTIVITY_TYPES), "Bench activity", read,
                       created + timedelta(hours=1) if read else None, created)

    load.copy("activities", ("user_id", "activity_type", "title", "is_read", "read_at",
                             "created_at"), rows())


def _posts(load: _Loader, rng: random.Random, sizes: BenchSizes, users: list[int],
           now: datetime) -> None:
    """Posts by Zipf-skewed authors over 14 days; likes, praise, trophies, comments and
    views on Zipf-skewed posts; follows of popular authors; mutual fellows; collectives."""
    collectives = list(range(1, sizes.collectives + 1))
    load.copy("collectives", ("id", "name"), ((c, f"Collective {c}") for c in collectives))
    load.copy("collective_members", ("collective_id", "user_id"),
              {(c, u) for u in users for c in rng.sample(collectives,
                                                         k=min(len(collectives),
                                                               rng.randint(0, 3)))})
    authors = users[:]
    rng.shuffle(authors)  # authors[0] is the most prolific / most followed
    author_cum = _zipf_cum_weights(len(authors), 1.0)
    post_authors = rng.choices(authors, cum_weights=author_cum, k=sizes.posts)
    span = timedelta(days=14).total_seconds()

    def posts():
        for i, author in enumerate(post_authors, start=1):
            yield (i, author, f"Post {i}", rng.sample(TAGS, k=rng.randint(0, 3)),
                   rng.choice(POST_TYPES), rng.choice(ASSET_TYPES),
                   rng.choice(collectives) if rng.random() < 0.3 else None,
                   rng.random() < 0.02,
                   now - timedelta(seconds=span * (1 - i / sizes.posts)),
                   now if rng.random() < 0.01 else None)

    load.copy("posts", ("id", "author_id", "title", "tags", "post_type", "asset_type",
                        "collective_id", "is_featured", "created_at", "deleted_at"), posts())
    popular = list(range(1, sizes.posts + 1))
    rng.shuffle(popular)
    post_cum = _zipf_cum_weights(len(popular), 1.1)

    def pairs(k: int) -> set[tuple[int, int]]:
        return set(zip(rng.choices(popular, cum_weights=post_cum, k=k),
                       rng.choices(users, k=k), strict=True))

    load.copy("post_likes", ("post_id", "user_id"), pairs(sizes.likes))
    load.copy("post_praises", ("post_id", "user_id"), pairs(sizes.likes // 10))
    load.copy("post_trophies", ("post_id", "user_id"), pairs(sizes.likes // 30))
    load.copy("comments", ("post_id", "author_id", "body"),
              ((p, u, "Bench comment") for p, u in pairs(sizes.comments)))
    load.copy("post_views", ("post_id", "viewer_id", "counted_at"),
              ((p, u, now - timedelta(hours=rng.random() * 24)) for p, u in
               pairs(sizes.post_views)))
    for table, column, key in (("post_likes", "like_count", "post_id"),
                               ("post_praises", "praise_count", "post_id"),
                               ("post_trophies", "trophy_count", "post_id"),
                               ("comments", "comment_count", "post_id"),
                               ("post_views", "view_count", "post_id")):
        load.execute(f"UPDATE posts p SET {column} = x.n FROM (SELECT {key}, count(*) n "
                     f"FROM {table} GROUP BY {key}) x WHERE x.{key} = p.id")

    def follows():
        for u in users:
            for f in set(rng.choices(authors, cum_weights=author_cum,
                                     k=sizes.follows_per_user)):
                if f != u:
                    yield (u, f)

    load.copy("follows", ("follower_id", "followee_id"), follows())
    fellows = set()
    for u in users:
        for f in rng.sample(users, k=sizes.fellows_per_user):
            if f != u:
                fellows.add((u, f))
                fellows.add((f, u))
    load.copy("fellows", ("user_id", "fellow_id"), fellows)
    load.copy("user_preferences",
              ("user_id", "preferred_post_types", "muted_collectives", "blocked_users"),
              ((u, rng.sample(POST_TYPES, k=rng.randint(0, 2)),
                rng.sample(collectives, k=rng.randint(0, 1)),
                rng.sample(users, k=rng.randint(0, 2)))
               for u in users if rng.random() < 0.1))


def _reels(load: _Loader, rng: random.Random, sizes: BenchSizes, users: list[int],
           now: datetime) -> None:
    """Reels; view events on Zipf-skewed reels, one row per (user, reel) with the newest
    view, the newest 50 per user kept; ``views_count`` counts every event."""
    reels = list(range(1, sizes.reels + 1))
    durations = {r: rng.randint(5, 90) for r in reels}
    load.copy("reels", ("id", "video_url", "description", "duration", "is_available",
                        "created_at"),
              ((r, f"https://cdn.example/reels/{r}.mp4", f"Reel {r}", durations[r],
                rng.random() < 0.97, now - timedelta(days=60)) for r in reels))
    popular = reels[:]
    rng.shuffle(popular)
    cum = _zipf_cum_weights(len(popular), 0.9)
    events = zip(rng.choices(users, k=sizes.reel_views),
                 rng.choices(popular, cum_weights=cum, k=sizes.reel_views), strict=True)
    latest: dict[tuple[int, int], tuple[float, int]] = {}
    views_count = dict.fromkeys(reels, 0)
    span = 30 * 24 * 3600
    for u, r in events:
        views_count[r] += 1
        at = rng.random() * span
        if at > latest.get((u, r), (-1.0, 0))[0]:
            latest[(u, r)] = (at, rng.randint(0, durations[r]))
    per_user: dict[int, list[tuple[float, int, int]]] = {}
    for (u, r), (at, duration) in latest.items():
        bisect.insort(per_user.setdefault(u, []), (-at, r, duration))
        if len(per_user[u]) > MAX_RECENT_REEL_VIEWS:
            per_user[u].pop()
    base = now - timedelta(seconds=span)
    load.copy("reel_views", ("user_id", "reel_id", "viewed_at", "view_duration"),
              ((u, r, base + timedelta(seconds=-neg), d)
               for u, rows in per_user.items() for neg, r, d in rows))
    load.execute("CREATE TEMP TABLE bench_reel_counts (reel_id bigint, n bigint)")
    load.copy("bench_reel_counts", ("reel_id", "n"), views_count.items())
    load.execute("UPDATE reels r SET views_count = c.n FROM bench_reel_counts c "
                 "WHERE c.reel_id = r.id")
    likes = set(zip(rng.choices(popular, cum_weights=cum, k=sizes.reel_likes),
                    rng.choices(users, k=sizes.reel_likes), strict=True))
    load.copy("reel_likes", ("reel_id", "user_id"), likes)
    load.execute("UPDATE reels r SET likes_count = l.n FROM (SELECT reel_id, count(*) n "
                 "FROM reel_likes GROUP BY reel_id) l WHERE l.reel_id = r.id")
