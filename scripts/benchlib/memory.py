"""Memory: Redis bytes per active user and per tracked view, Postgres bytes per row.

Redis: one SCAN over the bench's keyspace, ``MEMORY USAGE key SAMPLES 0`` (exact) of every
key under an active user's tag ``{u:<id>}``, grouped by key family (the key after the tag
with numbers replaced by ``#``, e.g. ``rs:#`` for a group read state). Shared keys (group,
community and other tags) are summed by family too. Tracked views:

* group feed: the ``{u:<id>}:rs:<gid>`` strings (watermark + bitmap) divided by that
  user's ``feed_item_views`` rows in that group;
* reels: the ``{u:<id>}:reels:recent`` sorted set divided by its entries (less the
  sentinel).

Entities (DESIGN rule 7, ``cache/entities.py``): the shared entity keys (a group feed
item ``{g:<id>}:item:<id>``, a reel ``{r:<id>}:reel``), bytes per entity, and per reel with
its version copy ``{r:<id>}:v:reel`` (a group's items share the group's ``live`` version).

Postgres: ``pg_total_relation_size`` (heap + indexes + TOAST) / rows, per table.
"""

from __future__ import annotations

import re
import statistics
from collections import defaultdict

import redis
from sqlalchemy import create_engine, text

USER_KEY = re.compile(r"^\{u:(\d+)\}:(.*)$")
TABLES = ("feed_item_views", "feed_items", "group_members", "activities", "posts",
          "post_likes", "follows", "reel_views", "reels", "cache_versions")


def family(rest: str) -> str:
    """``rs:7`` -> ``rs:#``; ids and hex tokens (snapshot ids) become ``#``."""
    return re.sub(r"[0-9a-f]{12,}|\d+", "#", rest)


def redis_memory(redis_url: str, prefix: str, users: list[int], db_url: str) -> dict:
    """Bytes per active user (mean over ``users`` that have keys), per family, shared keys,
    and bytes per tracked view. Raises redis / SQLAlchemy errors."""
    client = redis.Redis.from_url(redis_url, socket_timeout=30)
    wanted = set(users)
    user_keys: list[tuple[int, str, str]] = []
    shared_keys: list[tuple[str, str]] = []
    for raw in client.scan_iter(match=f"{prefix}*", count=2000):
        key = raw.decode()
        rest = key[len(prefix):]
        m = USER_KEY.match(rest)
        if m:
            if int(m.group(1)) in wanted:
                user_keys.append((int(m.group(1)), family(m.group(2)), key))
            continue
        shared_keys.append((family(rest), key))
    sizes = _usage(client, [k for _, _, k in user_keys] + [k for _, k in shared_keys])
    per_user: dict[int, int] = defaultdict(int)
    per_family: dict[str, list[int]] = defaultdict(list)
    for uid, fam, key in user_keys:
        per_user[uid] += sizes.get(key, 0)
        per_family[fam].append(sizes.get(key, 0))
    shared: dict[str, dict] = defaultdict(lambda: {"keys": 0, "bytes": 0})
    for fam, key in shared_keys:
        shared[fam]["keys"] += 1
        shared[fam]["bytes"] += sizes.get(key, 0)
    totals = list(per_user.values())
    return {
        "active_users_sampled": len(users),
        "users_with_keys": len(totals),
        "bytes_per_active_user_mean": statistics.fmean(totals) if totals else None,
        "bytes_per_active_user_median": statistics.median(totals) if totals else None,
        "per_user_family": {
            f: {"keys": len(v), "bytes_mean": statistics.fmean(v)}
            for f, v in sorted(per_family.items())
        },
        "shared": dict(sorted(shared.items())),
        "entities": _entities(shared),
        "tracked_views": {
            "group_feed_item_view": _group_feed_views(user_keys, sizes, db_url),
            "reel_view": _reel_views(client, user_keys, sizes),
        },
    }


ENTITY_FAMILIES = {"{g:#}:item:#": None, "{p:#}:post": "{p:#}:v:post",
                   "{r:#}:reel": "{r:#}:v:reel"}


def _entities(shared: dict[str, dict]) -> dict[str, dict]:
    out = {}
    for fam, version_fam in ENTITY_FAMILIES.items():
        v = shared.get(fam)
        if not v or not v["keys"]:
            continue
        copies = (shared.get(version_fam) or {}).get("bytes", 0) if version_fam else 0
        out[fam] = {"keys": v["keys"], "bytes_per_entity": v["bytes"] / v["keys"],
                    "bytes_per_entity_with_version": (v["bytes"] + copies) / v["keys"]}
    return out


def _usage(client: redis.Redis, keys: list[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for start in range(0, len(keys), 1000):
        chunk = keys[start:start + 1000]
        pipe = client.pipeline(transaction=False)
        for key in chunk:
            pipe.execute_command("MEMORY", "USAGE", key, "SAMPLES", "0")
        for key, size in zip(chunk, pipe.execute(), strict=True):
            if size is not None:  # expired between SCAN and MEMORY USAGE
                out[key] = int(size)
    return out


def _group_feed_views(user_keys: list[tuple[int, str, str]], sizes: dict[str, int],
                      db_url: str) -> dict | None:
    pairs = {}
    for uid, fam, key in user_keys:
        if fam == "rs:#":
            pairs[(uid, int(key.rsplit(":", 1)[1]))] = sizes.get(key, 0)
    if not pairs:
        return None
    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(text(
                "SELECT user_id, group_id, count(*) FROM feed_item_views "
                "WHERE user_id = ANY(:u) GROUP BY user_id, group_id"),
                {"u": sorted({u for u, _ in pairs})}).all()
    finally:
        engine.dispose()
    views = {(u, g): n for u, g, n in rows}
    total_views = sum(views.get(p, 0) for p in pairs)
    total_bytes = sum(pairs.values())
    return {
        "keys": len(pairs),
        "views": total_views,
        "bytes": total_bytes,
        "bytes_per_key": total_bytes / len(pairs),
        "bytes_per_view": total_bytes / total_views if total_views else None,
    }


def _reel_views(client: redis.Redis, user_keys: list[tuple[int, str, str]],
                sizes: dict[str, int]) -> dict | None:
    keys = [k for _, fam, k in user_keys if fam == "reels:recent"]
    if not keys:
        return None
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.zcard(key)
    entries = sum(max(0, n - 1) for n in pipe.execute())  # less the "filled" sentinel
    total = sum(sizes.get(k, 0) for k in keys)
    return {
        "keys": len(keys),
        "views": entries,
        "bytes": total,
        "bytes_per_key": total / len(keys),
        "bytes_per_view": total / entries if entries else None,
    }


def postgres_bytes_per_row(db_url: str) -> dict[str, dict]:
    """Per table: rows, total bytes (heap + indexes + TOAST), bytes per row."""
    engine = create_engine(db_url)
    out = {}
    try:
        with engine.connect() as conn:
            for table in TABLES:
                size, rows = conn.execute(text(
                    f"SELECT pg_total_relation_size('{table}'), (SELECT count(*) FROM {table})"
                )).one()
                out[table] = {"rows": rows, "bytes": size,
                              "bytes_per_row": size / rows if rows else None}
    finally:
        engine.dispose()
    return out
