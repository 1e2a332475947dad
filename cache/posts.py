"""The post entity (DESIGN rule 7) and each user's likes: what every page of posts is
assembled from (the community feed's trending / recent / following pages and the
personalized page), shared by both feeds. Nothing else touches these keys.

Layout:

- ``{p:<id>}:post``: one post as every viewer sees it (``cache/entities.py``), in its own
  slot under ``Scope(p:<id>, "post")`` (a ``cache_versions`` row per post). Fields:
  ``j``, the post's JSON object without its closing brace and without what moves: every
  ``PostFieldsOut`` field but ``author`` and the counters, rendered once in the API's
  formats; ``a``, the author's profile (``AuthorOut``) as JSON; ``like_count``,
  ``comment_count``, ``view_count``, ``praise_count``, ``trophy_count`` as decimals; ``m``,
  what pages filter on, JSON ``[author_id, collective_id, asset_type, tags]``.
- ``{u:<id>}:likes``: the ids of the posts the user likes, a set of integers (compact
  intset encoding up to 512 members) under ``Scope(u:<id>, "likes")``. Member ``0`` marks
  it filled (a user who likes nothing is a hit); a user with more than ``LIKES_CACHE_MAX``
  likes gets ``0`` and ``-1`` instead of ids ("ask Postgres": their pages read their likes
  of the page's posts with one statement).

Writes, each in the outbox change of the write's own transaction, the versions bumped in
the statement that changes the counter (``storage.posts.add_to_counter``: no statement
more for the bump; a comment or a counted view, which carried no cache change before,
now writes its outbox row and applies it: one statement and one pipeline):

- like / unlike: ``HSET`` of the post's ``like_count`` (absolute, read under the post's row
  lock; the post's version orders concurrent likes) and ``SADD`` / ``SREM`` of the liker's
  set; a comment, a counted view, a praise, a trophy: ``HSET`` of that counter;
- delete: ``DEL`` of the entity (a page that still lists the id skips it: a fill finds no
  live row);
- a profile change: ``HSET`` of ``a`` in each of the author's live posts, their versions
  bumped in the profile's transaction (one statement, ``storage.profiles``);
- a new post is cached by the first page that misses it.

Reads (``page_posts``): one round trip (or none: a page may send ``page_commands`` in a
batch of its own and hand over the replies), the page's entities (on a single Redis one
``READ_FIELDS`` script call for the page; on a cluster one ``HGETALL`` each, one pipeline
per node, in parallel; sent as a raw batch, ``cache.entities.batch``) and, for a
signed-in viewer, ``SMISMEMBER`` of the page's ids in their likes set; missing entities are
one batched fill (``EntityStore.complete``), a missing likes set one fill. Responses are
assembled from the cached bytes (``CachedPost.community_json`` / ``ranked_json``): no
schema dump per post.
Memory is bounded by the entity TTL (``Cache.idle_ttl``) and LRU eviction, both of which
end in one batched fill.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from cache import stats
from cache.client import NO_VALUE, CacheUnavailable
from cache.entities import (
    Entity,
    EntityStore,
    Fields,
    batch,
    encode,
    read_fields_commands,
    split_fields,
)
from cache.fill import LeaseHeld
from cache.keys import Keyspace, Scope, post_tag, user_tag
from cache.lease import wait_for
from cache.versioned import Change
from storage import posts as posts_store
from storage.posts import PostRow
from storage.times import isoformat

PATH = "posts"
LIKES_PATH = "posts.likes"
FILLED, OVER = "0", "-1"
# Likes kept per user: past it the set holds only the markers (an intset stays compact up
# to 512 members).
LIKES_CACHE_MAX = 500
VERSION_PREFIX, VERSION_SUFFIX = "p:", "|post"  # scope(id).row_name, for storage

# The PostFieldsOut fields a posts row carries under the same name (``j``).
STATIC_COLUMNS = ("id", "title", "description", "post_type", "asset_type", "asset_url",
                  "collective_id", "show_prompt", "is_featured", "inspired_by_post_id")
COUNTERS = ("like_count", "comment_count", "view_count", "praise_count", "trophy_count")


def scope(post_id: int) -> Scope:
    return Scope(post_tag(post_id), "post")


def key(keys: Keyspace, post_id: int) -> str:
    return keys.key(post_tag(post_id), "post")


def entity(keys: Keyspace, post_id: int) -> Entity:
    return Entity(post_id, scope(post_id), key(keys, post_id))


def likes_scope(user_id: int) -> Scope:
    return Scope(user_tag(user_id), "likes")


def likes_key(keys: Keyspace, user_id: int) -> str:
    return keys.key(user_tag(user_id), "likes")


# --- rendering ------------------------------------------------------------------------------


def render(row: PostRow) -> dict[str, bytes]:
    """A post's entity fields from its row (``storage.posts.PostRow``)."""
    post = row.post
    static: dict[str, Any] = {name: getattr(post, name) for name in STATIC_COLUMNS}
    static["user_id"] = static["author_id"] = post.author_id
    tags = list(post.tags or [])
    static["tags"] = tags
    static["prompt"] = post.prompt if post.show_prompt else None  # a hidden prompt never leaves
    static["created_at"] = isoformat(post.created_at)
    static["updated_at"] = isoformat(post.updated_at)
    fields = {
        "j": orjson.dumps(static)[:-1],  # open: the moving fields are appended
        "a": orjson.dumps(row.author),
        "m": orjson.dumps([post.author_id, post.collective_id, post.asset_type, tags]),
    }
    for name in COUNTERS:
        fields[name] = b"%d" % getattr(post, name)
    return fields


@dataclass(frozen=True)
class CachedPost:
    """One post's entity fields and the facts a page filters it by."""

    id: int
    fields: Fields
    author_id: int
    collective_id: int | None
    asset_type: str | None
    tags: frozenset[str]

    @classmethod
    def of(cls, post_id: int, fields: Fields) -> CachedPost:
        author, collective, asset_type, tags = orjson.loads(fields[b"m"])
        return cls(post_id, fields, author, collective, asset_type, frozenset(tags))

    def matches(self, asset_type: str | None, tags: Sequence[str]) -> bool:
        return (asset_type is None or self.asset_type == asset_type) and self.tags.issuperset(
            tags)

    def _common(self) -> bytes:
        f = self.fields
        return (f[b"j"] + b',"author":' + f[b"a"] + b',"like_count":' + f[b"like_count"]
                + b',"comment_count":' + f[b"comment_count"] + b',"view_count":'
                + f[b"view_count"])

    def community_json(self, liked: bool) -> bytes:
        """The post as the community feed shows it (``PostOut``)."""
        return self._common() + (b',"is_liked_by_viewer":true}' if liked
                                 else b',"is_liked_by_viewer":false}')

    def ranked_json(self, tail: bytes) -> bytes:
        """The post as the personalized feed shows it (``RankedPostOut``); ``tail``: the
        page's own fields, each ``,"name":value``."""
        f = self.fields
        return (self._common() + b',"praise_count":' + f[b"praise_count"]
                + b',"trophy_count":' + f[b"trophy_count"] + tail + b"}")


def from_rows(rows: dict[int, PostRow]) -> dict[int, CachedPost]:
    """Posts rendered straight from their rows (Redis down): the same bytes."""
    return {i: CachedPost.of(i, encode(render(row))) for i, row in rows.items()}


# --- reads ----------------------------------------------------------------------------------


def _load(deps: Any) -> Any:
    def load(ids: list[int]) -> dict[int, dict[str, bytes]]:
        with deps.db.read() as session:
            return {i: render(r) for i, r in posts_store.post_entities(session, ids).items()}

    return load


# The entity's fields, in the order ``page_posts`` reads them (``read_fields_commands``).
FIELDS = (b"j", b"a", b"m", *(name.encode() for name in COUNTERS))


def page_commands(deps: Any, post_ids: Sequence[int], viewer: int | None
                  ) -> list[tuple[Any, ...]]:
    """The commands of ``page_posts``' one round trip for ``post_ids``: the entities'
    fields (``cache.entities.read_fields_commands``: one script call on a single Redis)
    and, for a signed-in viewer, ``SMISMEMBER`` of the ids in their likes set and its
    ``EXPIRE``. A page may send them in a batch of its own (their raw replies, in order,
    are ``page_posts``' ``replies``)."""
    keys = deps.cache.keys
    # ``key(keys, i)``, inlined: this runs for every post of every page.
    prefix = keys.prefix
    commands = read_fields_commands(
        deps.cache.redis, [f"{prefix}{{p:{i}}}:post" for i in post_ids], FIELDS)
    if viewer is not None:
        lk = likes_key(keys, viewer)
        commands.append(("SMISMEMBER", lk, FILLED, OVER, *post_ids))
        commands.append(("EXPIRE", lk, deps.cache.idle_ttl))
    return commands


def page_posts(deps: Any, post_ids: Sequence[int], viewer: int | None,
               replies: Sequence[Any] | None = None
               ) -> tuple[dict[int, CachedPost], set[int]]:
    """The live posts among ``post_ids`` and which of them ``viewer`` likes: one round
    trip (``page_commands``, sent as one batch: ``cache.entities.batch``), or none when
    ``replies`` holds those commands' raw replies, read already; missing entities are one
    batched fill, a missing likes set one fill. Redis down: from Postgres."""
    if not post_ids and viewer is None:
        return {}, set()
    keys = deps.cache.keys
    ids = list(post_ids)
    load = _load(deps)
    if replies is None:
        commands = page_commands(deps, ids, viewer)
        try:
            replies = deps.cache.run(PATH, lambda r: batch(r, commands))
        except CacheUnavailable:
            stats.count(PATH, "fallback")
            posts = {i: CachedPost.of(i, encode(f)) for i, f in load(ids).items()}
            return posts, _liked_from_db(deps, viewer, list(posts))
    posts: dict[int, CachedPost] = {}
    missing: list[Entity] = []
    fields, rest = split_fields(deps.cache.redis, replies, len(ids), FIELDS)
    for i, values in zip(ids, fields, strict=True):
        if values[0] is None:  # never cached, expired or evicted (or deleted)
            missing.append(entity(keys, i))
        else:
            posts[i] = CachedPost.of(i, dict(zip(FIELDS, values, strict=True)))
    filled = EntityStore(deps.filler, PATH).complete(missing, [{}] * len(missing), load)
    posts.update((i, CachedPost.of(i, f)) for i, f in filled.items())
    if viewer is None:
        return posts, set()
    flags = [bool(x) for x in rest[0]]
    if flags[0] and not flags[1]:
        stats.count(LIKES_PATH, "hit")
        return posts, {i for i, f in zip(ids, flags[2:], strict=True) if f and i in posts}
    return posts, _liked_miss(deps, viewer, flags[0], list(posts))


def _liked_from_db(deps: Any, viewer: int | None, ids: list[int]) -> set[int]:
    if viewer is None or not ids:
        return set()
    with deps.db.read() as session:
        return posts_store.liked_among(session, viewer, ids)


def _liked_miss(deps: Any, viewer: int, filled: bool, ids: list[int]) -> set[int]:
    """The viewer's likes of ``ids`` when their set is missing (filled once, then read
    from what was loaded) or holds too many to cache (one statement)."""
    if not filled:
        stats.count(LIKES_PATH, "miss")
        try:
            liked = fill_likes(deps, viewer)
            if len(liked) <= LIKES_CACHE_MAX:
                return set(liked).intersection(ids)
        except LeaseHeld:  # another request fills it: wait for its fill
            got = wait_for(lambda: _read_likes(deps, viewer, ids), deps.cache.lease_wait_ms)
            if got is not NO_VALUE:
                return got
        except CacheUnavailable:
            pass
    stats.count(LIKES_PATH, "fallback")
    return _liked_from_db(deps, viewer, ids)


def _read_likes(deps: Any, viewer: int, ids: list[int]) -> Any:
    """The viewer's likes among ``ids`` from their set, ``NO_VALUE`` while it is missing
    (or holds too many to say)."""
    lk = likes_key(deps.cache.keys, viewer)
    flags = [bool(x) for x in deps.cache.run(
        LIKES_PATH, lambda r: r.smismember(lk, [FILLED, OVER, *ids]))]
    if not flags[0] or flags[1]:
        return NO_VALUE
    return {i for i, f in zip(ids, flags[2:], strict=True) if f}


def fill_likes(deps: Any, user_id: int) -> list[int]:
    """Fill the user's likes set from Postgres if it is missing (version-checked,
    single-flight: raises ``LeaseHeld`` while another fill runs); returns up to
    ``LIKES_CACHE_MAX + 1`` liked ids (more than the cap: only the markers are cached)."""
    lk = likes_key(deps.cache.keys, user_id)

    def load() -> list[int]:
        with deps.db.read() as session:
            return posts_store.liked_ids(session, user_id, LIKES_CACHE_MAX + 1)

    def stage(pipe: Any, temps: dict[str, str], liked: list[int]) -> None:
        if len(liked) > LIKES_CACHE_MAX:
            pipe.sadd(temps[lk], FILLED, OVER)
        else:
            pipe.sadd(temps[lk], FILLED, *liked)

    return deps.filler.fill(LIKES_PATH, likes_scope(user_id), [lk], load, stage,
                            only_if_missing=True)


# --- writes: ops carried by a unit of work --------------------------------------------------


def adopt(uow: Any, keys: Keyspace, post_id: int, version: int) -> Change:
    """The post's change, its version bumped by the write's own statement."""
    return uow.adopt(Change(scope(post_id), version, [key(keys, post_id)]))


def adopt_likes(uow: Any, keys: Keyspace, user_id: int, version: int) -> Change:
    """The user's likes set's change, its version bumped by the like's own statement."""
    return uow.adopt(Change(likes_scope(user_id), version, [likes_key(keys, user_id)]))


def on_counts(change: Change, keys: Keyspace, post_id: int, **counts: int) -> None:
    """A post's counters, absolute, set in place."""
    args: list[Any] = []
    for name, value in counts.items():
        if name not in COUNTERS:
            raise ValueError(f"{name} is not a post counter")
        args += [name, value]
    change.op("HSET", key(keys, post_id), *args)


def on_deleted(change: Change, keys: Keyspace, post_id: int) -> None:
    change.op("DEL", key(keys, post_id))


def on_author(change: Change, keys: Keyspace, post_id: int, author: dict[str, Any]) -> None:
    """The author's profile changed: re-render it in place."""
    change.op("HSET", key(keys, post_id), "a", orjson.dumps(author).decode())


def on_like(change: Change, keys: Keyspace, user_id: int, post_id: int, liked: bool) -> None:
    """The user's like of a post, in their likes set (if cached)."""
    change.op("SADD" if liked else "SREM", likes_key(keys, user_id), str(post_id))
