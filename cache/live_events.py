"""Live events (API section 6): one bounded Redis stream of events per user, and tickets.

Key layout (prefix and hash tags as in ``cache/keys.py``; every command is one slot):

``{u:<uid>}:live:ev``      STREAM  the user's events, newest last. Fields ``e`` (the event
    name: ``unread``, ``activity``, ``reset``, or ``mark``, a resume point that carries no
    event) and ``d`` (its JSON data). Trimmed at every append to about ``MAX_LEN`` entries
    (``XADD MAXLEN ~``, which keeps at least ``MAX_LEN``).
``{u:<uid>}:live:meta``    HASH    ``origin``: the id of the first entry of this incarnation
    of the stream. Written (HSETNX) by the append that finds it missing: a new stream, or
    one whose history Redis lost (restart, eviction). ``a:<scope name>``: the version of
    the user's newest change of that scope whose events are in the stream (``ANNOUNCE``
    writes it with them, atomically).
``{t:<ticket>}:live:ticket``  STRING  the user id a stream ticket was issued to; ``SET NX
    EX 60`` at issue, ``GETDEL`` at use, so a ticket works once, for 60 s.
channel ``<prefix>live:notify``  ``PUBLISH <uid>`` after each append; the stream process
    reads the user's stream when told.

Both keys expire ``STREAM_TTL`` after the last append; the stream process refreshes them
while the user is connected. Appends go only to users whose ``meta`` exists, i.e. users who
opened a stream within ``STREAM_TTL``: others read the REST endpoints when they connect.

Replay (``Last-Event-ID: L``) is exact or refused: the entries after ``L`` are sent when
``origin <= L`` (``L`` belongs to this incarnation), there are at most ``REPLAY_MAX`` of them
and the oldest is at most ``REPLAY_SECONDS`` old; otherwise the client gets ``reset``. A
trim that removed an entry after ``L`` leaves at least ``MAX_LEN = REPLAY_MAX + 1`` entries
after ``L``, so it always shows as "too many".

Events are appended by ``Publisher`` (wired into ``cache.outbox.Applier``): after a
committed change is applied, in the same pipeline it reads the Redis state the REST
endpoints read, so the counts it publishes equal their answers at that moment.

A change to one user's scope is announced by ``ANNOUNCE``: its events, appended only if the
scope's version copy is still the change's (a newer change's own events carry the newer
counts) and its ``a:<scope>`` mark is behind it (announced once), the mark set with them.
An announce that failed or timed out (the request's second round trip) is not lost: the
relay, reading the change's outbox row, finds the mark behind the version Redis holds and
announces the change again from the state now in Redis (``Publisher.unannounced``, then
``Applier.apply(..., repair=True)``): the same counts, an ``activity`` event without its
``item``, and a membership change as a ``reset``.

A group's new (or deleted) item changes the count of every member, so its events are a
job (``Publisher.fan_out_group``, enqueued by the request after the apply, one per change:
group and version): the request's cost does not grow with the group. The outbox change is
the source: a fan-out lost between the apply and the enqueue (a crash, the queue down) is
enqueued again by the relay when it reads the change's row (``announce_held``; the job id
is the group and version, so a fan-out already queued or run is not repeated), and a change
lost before its apply is applied by the relay, which then enqueues it. The job announces
only a change Redis holds (the group's version copy equals the job's version; older: not
applied yet, the relay's apply enqueues it again; newer: that change's own job sends the
newer counts). It reads each listening member's read-state version, newest events and read
state with the group's live bitmap (members whose read state is not cached are counted by
one Postgres statement), appends to those whose newest event of the group does not carry
the count already, then checks that no version changed under it and that the member's
newest event of the group is the one it expects, and goes again for the members for whom
either failed (``FANOUT_ROUNDS``), so the last event a member gets is the count REST
answers.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from sqlalchemy.exc import SQLAlchemyError

from cache import activity_feed
from cache import group_feed as gf_cache
from cache.client import CACHE_ERRORS, NO_VALUE, Cache, CacheUnavailable
from cache.fill import Filler
from cache.keys import Keyspace, user_tag
from cache.scripts import LuaScript
from cache.versioned import Change
from storage import group_feed as group_store
from storage.db import Database

log = logging.getLogger(__name__)

REPLAY_MAX = 500  # events a Last-Event-ID may replay
REPLAY_SECONDS = 600  # ...and how old the oldest of them may be
MAX_LEN = REPLAY_MAX + 1
STREAM_TTL = 3600  # seconds a user's stream outlives their last append or connection
TICKET_TTL = 60
TICKET_BYTES = 24

UNREAD, ACTIVITY, RESET, MARK = "unread", "activity", "reset", "mark"

PATH = "live_events"
FANOUT_CHUNK = 500  # members per round of a group's fan-out (a few pipelines each)
FANOUT_ROUNDS = 3  # reads -> append -> check, for members whose check failed


# --- key layout ---------------------------------------------------------------------------


def events_key(keys: Keyspace, user_id: int) -> str:
    return keys.key(user_tag(user_id), "live", "ev")


def meta_key(keys: Keyspace, user_id: int) -> str:
    return keys.key(user_tag(user_id), "live", "meta")


def ticket_key(keys: Keyspace, ticket: str) -> str:
    return keys.key(f"t:{ticket}", "live", "ticket")


def channel(keys: Keyspace) -> str:
    return f"{keys.prefix}live:notify"


# --- stream ids ---------------------------------------------------------------------------


def parse_id(raw: str | bytes) -> tuple[int, int] | None:
    """``(ms, seq)`` of a stream id ``"<ms>-<seq>"``, or None if it is not one."""
    text = raw.decode() if isinstance(raw, bytes) else raw
    ms, sep, seq = text.partition("-")
    if not sep or not ms.isdigit() or not seq.isdigit() or len(ms) > 15 or len(seq) > 15:
        return None
    return int(ms), int(seq)


def _text(raw: Any) -> str:
    return raw.decode() if isinstance(raw, bytes) else str(raw)


@dataclass(frozen=True)
class Event:
    id: str
    name: str
    data: bytes  # JSON

    @classmethod
    def from_entry(cls, entry: tuple[Any, dict[Any, Any]]) -> Event:
        entry_id, fields = entry
        name = fields.get(b"e", fields.get("e", b""))
        data = fields.get(b"d", fields.get("d", b"{}"))
        return cls(_text(entry_id), _text(name), data if isinstance(data, bytes)
                   else str(data).encode())


# --- tickets ------------------------------------------------------------------------------


def issue_ticket(cache: Cache, user_id: int) -> str:
    """A new single-use ticket for ``user_id``, valid ``TICKET_TTL`` s.

    Raises ``CacheUnavailable`` if Redis is down (no ticket can be checked then either)."""
    ticket = secrets.token_urlsafe(TICKET_BYTES)
    key = ticket_key(cache.keys, ticket)
    cache.run(PATH, lambda r: r.set(key, user_id, nx=True, ex=TICKET_TTL))
    return ticket


async def redeem_ticket(aredis: Any, keys: Keyspace, ticket: str) -> int | None:
    """The user of ``ticket``, consuming it; None if unknown, used or expired.
    Raises a Redis error if Redis is down."""
    if not ticket or len(ticket) > 100:
        return None
    raw = await aredis.getdel(ticket_key(keys, ticket))
    return None if raw is None else int(raw)


# --- appending ----------------------------------------------------------------------------


def append(client: Any, keys: Keyspace, events: Sequence[tuple[int, str, dict[str, Any]]]
           ) -> list[str]:
    """Append ``(user_id, name, data)`` events; returns their ids. One pipelined round trip
    (two for users whose stream is new). Raises a Redis error if Redis fails."""
    if not events:
        return []
    pipe = client.pipeline(transaction=False)
    for user_id, name, data in events:
        queue_append(pipe, keys, user_id, name, data)
    pipe.publish(channel(keys), ",".join(str(u) for u in dict.fromkeys(e[0] for e in events)))
    replies = pipe.execute()
    ids = [_text(replies[4 * i + 1]) for i in range(len(events))]
    new = [(events[i][0], ids[i]) for i in range(len(events)) if not replies[4 * i]]
    if new:
        set_origins(client.pipeline(transaction=False), keys, new).execute()
    return ids


def queue_append(pipe: Any, keys: Keyspace, user_id: int, name: str, data: dict[str, Any]
                 ) -> None:
    """Queue the 4 commands of one append (replies: has-origin, id, 2 x expire)."""
    ev, meta = events_key(keys, user_id), meta_key(keys, user_id)
    pipe.hexists(meta, "origin")
    pipe.xadd(ev, {"e": name, "d": orjson.dumps(data)}, maxlen=MAX_LEN, approximate=True)
    pipe.expire(ev, STREAM_TTL)
    pipe.expire(meta, STREAM_TTL)


def set_origins(pipe: Any, keys: Keyspace, new: Iterable[tuple[int, str]]) -> Any:
    for user_id, entry_id in new:
        pipe.hsetnx(meta_key(keys, user_id), "origin", entry_id)
        pipe.expire(meta_key(keys, user_id), STREAM_TTL)
    return pipe


# KEYS: the user's events, meta, the change's version copy. ARGV: the mark's field, the
# change's version, MAX_LEN, STREAM_TTL, then (name, data) of each event. Appends the
# events unless the user has no stream, the copy holds another version (a newer change
# announces itself) or the mark is at or past the version (announced already). Returns the
# ids appended (none when it did not append).
ANNOUNCE = LuaScript("""
if redis.call('EXISTS', KEYS[2]) == 0 then return {} end
local v = tonumber(ARGV[2])
local copy = redis.call('GET', KEYS[3])
if copy and tonumber(copy) ~= v then return {} end
local mark = redis.call('HGET', KEYS[2], ARGV[1])
if mark and tonumber(mark) >= v then return {} end
local ids = {}
for i = 5, #ARGV, 2 do
  ids[#ids + 1] = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], '*',
                             'e', ARGV[i], 'd', ARGV[i + 1])
end
redis.call('HSET', KEYS[2], ARGV[1], v)
redis.call('HSETNX', KEYS[2], 'origin', ids[1])
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('EXPIRE', KEYS[2], ARGV[4])
return ids
""")


def mark_field(change: Change) -> str:
    return f"a:{change.scope.name}"


@dataclass
class Announcement:
    """The events of one committed change to one user's scope."""

    user_id: int
    change: Change
    events: list[tuple[str, dict[str, Any]]]


def announce(client: Any, keys: Keyspace, announcements: Sequence[Announcement]
             ) -> list[list[str]]:
    """``ANNOUNCE`` each, and tell the stream processes: one pipelined round trip. Returns
    the ids appended per announcement. Raises a Redis error if Redis fails."""
    if not announcements:
        return []
    pipe = client.pipeline(transaction=False)
    for a in announcements:
        args: list[Any] = [mark_field(a.change), a.change.version, MAX_LEN, STREAM_TTL]
        for name, data in a.events:
            args += [name, orjson.dumps(data)]
        ANNOUNCE([events_key(keys, a.user_id), meta_key(keys, a.user_id),
                  keys.version(a.change.scope)], args, pipe)
    users = dict.fromkeys(a.user_id for a in announcements)
    pipe.publish(channel(keys), ",".join(str(u) for u in users))
    return [[_text(i) for i in ids] for ids in pipe.execute()[:-1]]


# --- reading (the stream process, on redis.asyncio) ---------------------------------------


@dataclass
class Replay:
    events: list[Event]
    reset: bool


def _older(a: str, b: str) -> bool:
    pa, pb = parse_id(a), parse_id(b)
    return pa is not None and pb is not None and pa < pb


async def replay(aredis: Any, keys: Keyspace, user_id: int, last_id: str,
                 now_ms: int | None = None) -> Replay:
    """What the user missed after ``last_id`` (see the module docstring), or a reset."""
    if parse_id(last_id) is None:
        return Replay([], True)
    pipe = aredis.pipeline(transaction=False)
    pipe.hget(meta_key(keys, user_id), "origin")
    pipe.xrange(events_key(keys, user_id), f"({last_id}", "+", count=MAX_LEN)
    origin, entries = await pipe.execute()
    if origin is None or _older(last_id, _text(origin)):
        return Replay([], True)
    events = [Event.from_entry(e) for e in entries]
    if len(events) > REPLAY_MAX:
        return Replay([], True)
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    if events and parse_id(events[0].id)[0] < now_ms - REPLAY_SECONDS * 1000:  # type: ignore[index]
        return Replay([], True)
    return Replay(events, False)


async def fetch_after(aredis: Any, keys: Keyspace, cursors: Sequence[tuple[int, str]]
                      ) -> list[list[Event] | None]:
    """For each ``(user_id, last_id)``: the entries after ``last_id``, or None when there
    are more than ``REPLAY_MAX`` (the client is too far behind: reset). One round trip."""
    pipe = aredis.pipeline(transaction=False)
    for user_id, last_id in cursors:
        pipe.xrange(events_key(keys, user_id), f"({last_id}", "+", count=MAX_LEN)
    out: list[list[Event] | None] = []
    for entries in await pipe.execute():
        out.append(None if len(entries) > REPLAY_MAX else [Event.from_entry(e) for e in entries])
    return out


async def resume_point(aredis: Any, keys: Keyspace, user_id: int) -> str:
    """The id a new connection resumes from: the newest entry of the user's stream, after
    appending a ``mark`` if the stream is new or its origin lost. Also refreshes the TTLs,
    which makes the user's writes publish."""
    return (await resume_points(aredis, keys, [user_id]))[user_id]


async def resume_points(aredis: Any, keys: Keyspace, user_ids: Iterable[int]
                        ) -> dict[int, str]:
    """``resume_point`` of many users in at most three round trips (the stream process
    batches the streams being opened: one pipeline for a burst of reconnects)."""
    users = list(dict.fromkeys(user_ids))
    pipe = aredis.pipeline(transaction=False)
    for user_id in users:
        ev, meta = events_key(keys, user_id), meta_key(keys, user_id)
        pipe.hget(meta, "origin")
        pipe.xrevrange(ev, "+", "-", count=1)
        pipe.expire(ev, STREAM_TTL)
        pipe.expire(meta, STREAM_TTL)
    replies = await pipe.execute()
    out: dict[int, str] = {}
    new = []
    for i, user_id in enumerate(users):
        origin, top = replies[4 * i], replies[4 * i + 1]
        if origin is not None and top:
            out[user_id] = _text(top[0][0])
        else:
            new.append(user_id)
    if new:
        pipe = aredis.pipeline(transaction=False)
        for user_id in new:
            queue_append(pipe, keys, user_id, MARK, {})
        replies = await pipe.execute()
        marks = [(user_id, _text(replies[4 * i + 1])) for i, user_id in enumerate(new)]
        await set_origins(aredis.pipeline(transaction=False), keys, marks).execute()
        out.update(marks)
    return out


async def touch(aredis: Any, keys: Keyspace, user_ids: Iterable[int]) -> None:
    """Refresh the TTLs of connected users' streams (one round trip)."""
    pipe = aredis.pipeline(transaction=False)
    for user_id in user_ids:
        pipe.expire(events_key(keys, user_id), STREAM_TTL)
        pipe.expire(meta_key(keys, user_id), STREAM_TTL)
    await pipe.execute()


# --- publishing: which committed changes make which events --------------------------------


def _user_of(tag: str) -> int | None:
    return int(tag[2:]) if tag.startswith("u:") and tag[2:].isdigit() else None


def _group_of(tag: str) -> int | None:
    return int(tag[2:]) if tag.startswith("g:") and tag[2:].isdigit() else None


@dataclass
class Plan:
    """The reads a batch of changes needs, queued around their apply in one pipeline."""

    keys: Keyspace
    n_changes: int
    before: list[tuple[str, int, Any]] = field(default_factory=list)  # (kind, uid, extra)
    # (kind, uid, extra, change): the reads after the apply, one change each
    after: list[tuple[str, int, Any, Change]] = field(default_factory=list)
    # (group, version) of each change to a group's live bitmap: a fan-out job each.
    groups_live: list[tuple[int, int]] = field(default_factory=list)
    repair: bool = False  # the relay announces changes Redis held already
    by: str = "request"

    def queue_after(self, pipe: Any) -> None:
        for kind, user_id, extra, _ in self.after:
            pipe.exists(meta_key(self.keys, user_id))
            if kind == UNREAD:
                pipe.get(gf_cache.key(self.keys, user_id, extra))
                pipe.get(gf_cache.live_key(self.keys, extra))

    def split(self, replies: list[Any]) -> tuple[list[Any], list[Any]]:
        n = len(self.before)
        return replies[:n], replies[n + self.n_changes:]


# Queues the fan-out job of (group, version); the service provides it (RQ, by name).
EnqueueFanOut = Callable[[Sequence[tuple[int, int]]], None]


class Publisher:
    """Turns applied changes into events for the users who have a stream.

    Per change scope: a user's read state in a group (``rs:<g>``) gives that user an
    ``unread`` event; a group's live bitmap (``live``) gives every member with a stream an
    ``unread`` event, from a job (``enqueue_fan_out``, then ``fan_out_group``); a user's
    memberships (``groups``) give ``unread`` events for groups joined (their count) and
    left (0), or ``reset`` if the old set was not cached; a user's activity feed
    (``activity``) gives an ``activity`` event with the unread count the change wrote, and
    the newest item when the change added items.
    """

    def __init__(self, cache: Cache, filler: Filler, db: Database,
                 enqueue_fan_out: EnqueueFanOut) -> None:
        self.cache = cache
        self.db = db
        self.read_states = gf_cache.ReadStates(cache, filler, db)
        self.enqueue_fan_out = enqueue_fan_out

    def plan(self, pipe: Any, changes: Sequence[Change], by: str = "request",
             repair: bool = False) -> Plan:
        """Queue the reads needed before the changes' apply; returns the plan. ``repair``:
        the changes are in Redis already and their announce was lost (``unannounced``)."""
        keys = self.cache.keys
        plan = Plan(keys, len(changes), repair=repair, by=by)
        for change in changes:
            name, tag = change.scope.name, change.scope.tag
            user_id = _user_of(tag)
            if user_id is not None and name.startswith("rs:") and name[3:].isdigit():
                plan.after.append((UNREAD, user_id, int(name[3:]), change))
            elif user_id is not None and name == "activity":
                activity_feed.queue_total(pipe, keys, user_id)
                plan.before.append((ACTIVITY, user_id, change))
                plan.after.append((ACTIVITY, user_id, change, change))
            elif user_id is not None and name == "groups":
                gf_cache.queue_groups(pipe, keys, user_id)
                plan.before.append((RESET, user_id, None))
                plan.after.append((RESET, user_id, None, change))
            elif name == "live" and (group_id := _group_of(tag)) is not None and not repair:
                plan.groups_live.append((group_id, change.version))
        return plan

    def publish(self, plan: Plan, replies: list[Any]) -> None:
        """Compute and announce the events, and queue the groups' fan-outs. Never raises:
        an announce that failed is made by the relay (``unannounced``); a fan-out that could
        not be queued is queued by the relay."""
        try:
            announcements = self._events(plan, replies)
            if announcements:
                run = self.cache.run_unguarded if plan.by == "relay" else self.cache.run
                run(PATH, lambda r: announce(r, self.cache.keys, announcements))
        except (CacheUnavailable, SQLAlchemyError, *CACHE_ERRORS) as exc:
            log.warning("live events not announced (the outbox relay announces them): %s",
                        exc)
        if plan.groups_live:
            self.enqueue_fan_out(plan.groups_live)

    def unannounced(self, changes: Sequence[Change], started: Sequence[float]
                    ) -> list[Change]:
        """Of changes Redis holds (their request applied them), those to a user's scope
        whose announce was lost: the user's stream began before the change (``started``:
        when each change's transaction began, epoch seconds; a stream opened later started
        from the state the change made), the scope's version copy is the change's and its
        mark is behind it. One pipelined round trip (ignoring the breaker: the relay's
        check). Raises ``CacheUnavailable``."""
        keys = self.cache.keys
        mine = [(uid, c, t) for c, t in zip(changes, started, strict=True)
                if (uid := _user_of(c.scope.tag)) is not None
                and (c.scope.name in ("activity", "groups") or c.scope.name.startswith("rs:"))]
        if not mine:
            return []

        def run(r: Any) -> list[Any]:
            pipe = r.pipeline(transaction=False)
            for uid, c, _ in mine:
                pipe.hmget(meta_key(keys, uid), ["origin", mark_field(c)])
                pipe.get(keys.version(c.scope))
            return pipe.execute()

        replies = self.cache.run_unguarded(PATH, run)
        out = []
        for i, (_, c, t) in enumerate(mine):
            (origin, mark), copy = replies[2 * i], replies[2 * i + 1]
            began = parse_id(origin) if origin is not None else None
            if began is None or began[0] > t * 1000:
                continue  # no stream, or one opened after the change
            if copy is not None and int(copy) == c.version and (
                    mark is None or int(mark) < c.version):
                out.append(c)
        return out

    def announce_held(self, changes: Iterable[Change]) -> None:
        """The relay's repair for changes Redis already holds: queue their groups' fan-outs
        again (a no-op for those their request queued; see the module docstring)."""
        fan_outs = [(group_id, c.version) for c in changes if c.scope.name == "live"
                    and (group_id := _group_of(c.scope.tag)) is not None]
        if fan_outs:
            self.enqueue_fan_out(fan_outs)

    def _events(self, plan: Plan, replies: list[Any]) -> list[Announcement]:
        before, after = plan.split(replies)
        old: dict[tuple[str, int], Any] = {
            (kind, uid): reply for (kind, uid, _), reply in zip(plan.before, before, strict=True)
        }
        out: list[Announcement] = []
        i = 0
        for kind, user_id, extra, change in plan.after:
            active = after[i]
            i += 1
            events: list[tuple[str, dict[str, Any]]] = []
            if kind == UNREAD:
                raw = (after[i], after[i + 1])
                i += 2
                if active:
                    count = self.read_states.counts_from_raw(user_id, {extra: raw})[extra]
                    events.append((UNREAD, {"group": extra, "unread_count": count}))
            elif not active:
                continue
            elif kind == ACTIVITY:
                event = activity_event(extra, self.cache.keys, user_id, old[(kind, user_id)])
                if event is not None:
                    events.append((ACTIVITY, event))
            elif kind == RESET:
                # A repair cannot tell the groups joined or left (the old set is gone).
                events += [(RESET, {})] if plan.repair else self._membership_events(
                    user_id, old[(kind, user_id)])
            if events:
                out.append(Announcement(user_id, change, events))
        return out

    def _membership_events(self, user_id: int, old_reply: Any
                           ) -> list[tuple[str, dict[str, Any]]]:
        old = gf_cache.parse_groups(old_reply)
        if old is NO_VALUE:
            return [(RESET, {})]
        with self.db.read() as session:
            new = set(group_store.member_group_ids(session, user_id))
        events = [(UNREAD, {"group": g, "unread_count": 0}) for g in sorted(old - new)]
        for group_id in sorted(new - old):
            _, count = self.read_states.group_unread(user_id, group_id, check_member=False)
            events.append((UNREAD, {"group": group_id, "unread_count": count}))
        return events

    def fan_out_group(self, group_id: int, version: int) -> int:
        """The job of change ``version`` of the group's live bitmap: every member with a
        stream gets the group's unread count. Returns how many events it appended.
        Raises ``CacheUnavailable`` if Redis fails (the job is retried)."""
        with self.db.read() as session:
            members = group_store.group_member_ids(session, group_id)
        sent = 0
        for i in range(0, max(len(members), 1), FANOUT_CHUNK):
            chunk = self._fan_out_chunk(group_id, version, members[i:i + FANOUT_CHUNK])
            if chunk is None:
                return 0
            sent += chunk
        return sent

    def _fan_out_chunk(self, group_id: int, version: int, members: list[int]) -> int | None:
        """Rounds of read -> append -> check for one chunk of members (see the module
        docstring); a member whose newest event of the group already carries the count
        gets none (a repeated job, an item deleted before its fan-out ran). None, and no
        event, when Redis does not hold ``version`` (or holds a newer one)."""
        keys = self.cache.keys

        def listening(r: Any) -> list[Any]:
            pipe = r.pipeline(transaction=False)
            pipe.get(keys.version(gf_cache.live_scope(group_id)))
            for user_id in members:
                pipe.exists(meta_key(keys, user_id))
            return pipe.execute()

        held, *on = self.cache.run(PATH, listening)
        if held is None or int(held) != version:
            log.debug("fan-out of group %d v%d skipped: Redis holds %s", group_id, version,
                      held)
            return None
        todo = [u for u, active in zip(members, on, strict=True) if active]
        sent = 0
        for _ in range(FANOUT_ROUNDS):
            if not todo:
                break
            before = self.cache.run(PATH, lambda r, users=todo: _snapshot(
                r, keys, group_id, users, with_data=True))
            live = before.live if before.live is not None else \
                self.read_states.fill_live(group_id)
            # Members whose read state is not cached: one statement for all of them, not a
            # fill each (a lease, two loads and a publish per member).
            cold = [u for u in todo if before.states[u] is None]
            counts = {}
            if cold:
                with self.db.read() as session:
                    counts = group_store.unread_counts_in_group(session, group_id, cold)
            events, expected = [], {}
            for user_id in todo:
                rs_raw = before.states[user_id]
                count = counts[user_id] if rs_raw is None else gf_cache.unread(
                    live, gf_cache.ReadState.from_raw(rs_raw))
                last = before.last[user_id]
                if last is not None and last[1] == count:
                    expected[user_id] = last[0]
                else:
                    events.append((user_id, UNREAD, {"group": group_id, "unread_count": count}))
            ids = self.cache.run(PATH, lambda r, ev=events: append(r, keys, ev))
            sent += len(events)
            expected.update((e[0], i) for e, i in zip(events, ids, strict=True))
            after = self.cache.run(PATH, lambda r, users=todo: _snapshot(
                r, keys, group_id, users, with_data=False))
            moved = after.live_version != before.live_version
            todo = [u for u in todo if moved or after.versions[u] != before.versions[u]
                    or (after.last[u] or ("",))[0] != expected[u]]
        return sent


@dataclass
class _Snapshot:
    """A fan-out's view of one group and some members (versions read before the data)."""

    live_version: Any
    live: bytes | None
    versions: dict[int, Any]  # each member's read-state version copy
    states: dict[int, bytes | None]  # ...read state (with_data)
    last: dict[int, tuple[str, int] | None]  # ...newest event of the group: (id, count)


FANOUT_TAIL = 8  # a member's newest entries searched for their newest event of the group


def _snapshot(r: Any, keys: Keyspace, group_id: int, users: list[int], with_data: bool
              ) -> _Snapshot:
    pipe = r.pipeline(transaction=False)
    pipe.get(keys.version(gf_cache.live_scope(group_id)))
    for user_id in users:
        pipe.get(keys.version(gf_cache.scope(user_id, group_id)))
        pipe.xrevrange(events_key(keys, user_id), "+", "-", count=FANOUT_TAIL)
    if with_data:
        pipe.get(gf_cache.live_key(keys, group_id))
        for user_id in users:
            pipe.get(gf_cache.key(keys, user_id, group_id))
    reply = pipe.execute()
    n = len(users)
    versions = {u: reply[1 + 2 * i] for i, u in enumerate(users)}
    last = {u: _last_of_group(reply[2 + 2 * i], group_id) for i, u in enumerate(users)}
    live = reply[1 + 2 * n] if with_data else None
    states = {u: reply[2 + 2 * n + i] for i, u in enumerate(users)} if with_data else {}
    return _Snapshot(reply[0], live, versions, states, last)


def _last_of_group(entries: list[Any], group_id: int) -> tuple[str, int] | None:
    """``(id, unread_count)`` of the newest ``unread`` event of the group among ``entries``
    (newest first), None if there is none."""
    for entry in entries:
        event = Event.from_entry(entry)
        if event.name != UNREAD:
            continue
        data = orjson.loads(event.data)
        if data.get("group") == group_id:
            return event.id, int(data.get("unread_count", -1))
    return None


def activity_event(change: Change, keys: Keyspace, user_id: int, old_head: Any
                   ) -> dict[str, Any] | None:
    """``{"unread_count"[, "item"]}`` from the absolute values an activity change wrote
    (``cache.activity_feed.record_write``); ``item`` (the newest) when the total grew over
    the cached one (``old_head``: ``activity_feed.queue_total``'s reply)."""
    values = activity_feed.written(change, keys, user_id)
    if values is None:
        return None
    counts, items = values
    event: dict[str, Any] = {"unread_count": counts.unread}
    old_total = activity_feed.total_of(old_head)
    if old_total is not None and items and counts.total > old_total:
        event["item"] = items[0]
    return event

