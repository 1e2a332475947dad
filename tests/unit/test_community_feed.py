"""The community feed's pure parts (API section 3), no servers: the cursor codec, the tags
argument, the request schemas, visibility and counts, the trending score against API.md's
formula, the key layout, and a page's walk over a scripted source."""

from __future__ import annotations

import base64
import math
from datetime import UTC, datetime, timedelta, timezone
from types import SimpleNamespace

import orjson
import pytest
from marshmallow import ValidationError

from cache import community_feed as cf
from cache.keys import Keyspace
from service import community_feed_trending as trending
from service import community_feed_walk as walk
from service.community_feed import parse_tags
from service.community_feed_cursor import (
    BadCursor,
    decode_cursor,
    encode_cursor,
    filters_digest,
)
from service.community_feed_ops import created_us
from service.community_feed_walk import PUBLIC, Source, Visibility
from service.errors import ApiError
from service.schemas import FeedArgs, PostIn
from storage.posts import Engagement

Q = filters_digest(None, [])


def _raw(data: object) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(data)).decode().rstrip("=")


# --- cursors ------------------------------------------------------------------------------


def test_cursor_round_trips_and_is_unpadded_base64url_json():
    raw = encode_cursor({"f": "recent", "q": Q, "k": [1_700_000_000_000_000, 42]})
    assert "=" not in raw and "+" not in raw and "/" not in raw
    data = decode_cursor(raw, "recent", Q)
    assert data == {"v": 1, "f": "recent", "q": Q, "k": [1_700_000_000_000_000, 42]}
    walk_data = {"f": "trending", "q": Q, "k": [5, 7], "s": 3, "fl": [2, 9]}
    assert decode_cursor(encode_cursor(walk_data), "trending", Q) == {"v": 1, **walk_data}


@pytest.mark.parametrize("raw", [
    "!!", "abc", "", _raw({"v": 1}), _raw([1, 2]), _raw("k"), _raw(None),
    _raw({"v": 2, "f": "recent", "q": Q, "k": [1, 2]}),           # another version
    _raw({"v": 1, "f": "trending", "q": Q, "k": [1, 2], "s": 1}),  # another feed
    _raw({"v": 1, "f": "recent", "q": "0" * 10, "k": [1, 2]}),     # other filters
    _raw({"v": 1, "f": "recent", "q": Q, "k": [1]}),
    _raw({"v": 1, "f": "recent", "q": Q, "k": [1, 2, 3]}),
    _raw({"v": 1, "f": "recent", "q": Q, "k": [-1, 2]}),
    _raw({"v": 1, "f": "recent", "q": Q, "k": [2**63, 2]}),
    _raw({"v": 1, "f": "recent", "q": Q, "k": [True, 2]}),
    _raw({"v": 1, "f": "recent", "q": Q, "k": [1.0, 2]}),
    _raw({"v": 1, "f": "recent", "q": Q, "k": "1,2"}),
])
def test_foreign_or_malformed_cursors_are_refused(raw):
    with pytest.raises(BadCursor) as caught:
        decode_cursor(raw, "recent", Q)
    assert caught.value.code == "invalid_cursor"
    assert caught.value.details == {"cursor": ["Invalid or foreign cursor."]}


@pytest.mark.parametrize("extra", [
    {}, {"s": 0}, {"s": -3}, {"s": 2**63}, {"s": "3"}, {"s": True},
    {"s": 3, "fl": [1]}, {"s": 3, "fl": [1, -2]}, {"s": 3, "fl": "1:2"},
])
def test_trending_cursors_need_a_snapshot_and_a_well_formed_floor(extra):
    raw = _raw({"v": 1, "f": "trending", "q": Q, "k": [1, 2], **extra})
    with pytest.raises(BadCursor):
        decode_cursor(raw, "trending", Q)


def test_filters_digest_tells_filters_apart():
    digests = {filters_digest(None, []), filters_digest("image", []),
               filters_digest(None, ["a"]), filters_digest(None, ["a", "b"]),
               filters_digest("image", ["a"])}
    assert len(digests) == 5
    assert all(len(d) == 10 for d in digests)
    assert filters_digest(None, ("a", "b")) == filters_digest(None, ["a", "b"])


# --- request parsing ------------------------------------------------------------------------


def test_tags_are_unique_sorted_and_blanks_dropped():
    assert parse_tags(None) == []
    assert parse_tags("") == []
    assert parse_tags(" b, a ,,b , ") == ["a", "b"]
    assert parse_tags(",".join(f"t{i}" for i in range(20))) == sorted(
        f"t{i}" for i in range(20))


@pytest.mark.parametrize("raw", [",".join(f"t{i}" for i in range(21)), "ok," + "x" * 51])
def test_too_many_or_too_long_tags_are_a_validation_error(raw):
    with pytest.raises(ApiError) as caught:
        parse_tags(raw)
    assert caught.value.code == "validation_error"
    assert list(caught.value.details) == ["tags"]


def test_feed_args_defaults_and_bounds():
    assert FeedArgs().load({}) == {"feed_type": "trending", "cursor": None, "limit": 20,
                                   "asset_type": None, "tags": None}
    for bad in ({"feed_type": "hot"}, {"limit": 0}, {"limit": 51}, {"cursor": "x" * 2001},
                {"asset_type": ""}, {"tags": "x" * 1101}):
        with pytest.raises(ValidationError) as caught:
            FeedArgs().load(bad)
        assert set(caught.value.messages) == set(bad)


def test_post_in_defaults_and_bounds():
    loaded = PostIn().load({"title": "t"})
    assert loaded["tags"] == [] and loaded["post_type"] == "post"
    assert loaded["collective_id"] is None and loaded["show_prompt"] is False
    for bad in ({}, {"title": ""}, {"title": "x" * 301}, {"title": "t", "tags": [""]},
                {"title": "t", "tags": ["x"] * 21}, {"title": "t", "collective_id": 0}):
        with pytest.raises(ValidationError):
            PostIn().load(bad)


# --- visibility and counts -----------------------------------------------------------------


def test_visibility_sees_public_posts_and_its_collectives():
    member = Visibility.of([3, 5])
    assert member.sees(None) and member.sees(3) and not member.sees(4)
    assert PUBLIC.sees(None) and not PUBLIC.sees(3)
    admin = Visibility.of(None)
    assert admin.sees(4) and admin.collectives is None
    grouped = (10, {3: 2, 4: 7, 5: 1})
    assert member.total(*grouped) == 13
    assert PUBLIC.total(*grouped) == 10
    assert admin.total(*grouped) == 20


def test_grouped_counts_and_adjustments_round_trip():
    value = (4, {12: 3, 2: 1})
    raw = cf.encode_grouped(value)
    assert raw == '[4,{"2":1,"12":3}]'
    assert cf.decode_grouped(raw) == value
    digest = cf.blocked_digest([9, 3])
    assert digest == cf.blocked_digest([3, 9]) != cf.blocked_digest([3])
    assert cf.decode_adjustment(cf.encode_adjustment(digest, value).encode()) == (digest, value)
    assert cf.count_field("g", "r", None, ["a"]) == '["g","r",null,["a"]]'
    assert cf.blocked_field(7, '["g","r"]') == '["b",7,"[\\"g\\",\\"r\\"]"]'


# --- trending --------------------------------------------------------------------------------


def _api_md_score(likes, comments, views, featured, age_hours):
    """API.md: (likes + 2·comments + 0.1·views) / max(age_hours, 0.1)^1.5, ×1.5 if featured."""
    score = (likes + 2 * comments + 0.1 * views) / max(age_hours, 0.1) ** 1.5
    return score * 1.5 if featured else score


@pytest.mark.parametrize("likes,comments,views,featured,age_hours", [
    (0, 0, 0, False, 1.0), (10, 2, 30, False, 5.0), (10, 2, 30, True, 5.0),
    (3, 0, 0, False, 0.0), (3, 0, 0, False, 0.05), (1, 1, 1, False, 24 * 365.0),
    (1000, 50, 100_000, True, 0.5),
])
def test_trending_score_is_api_md_formula_scaled_to_an_integer(likes, comments, views,
                                                               featured, age_hours):
    ref = 1_800_000_000.0
    got = cf.trending_score(likes, comments, views, featured, ref - age_hours * 3600, ref)
    expected = _api_md_score(likes, comments, views, featured, age_hours)
    assert isinstance(got, int) and 1 <= got < 2**53
    assert got - 1 == pytest.approx(expected * cf.TRENDING_SCALE, abs=1)


def test_trending_score_is_capped_below_2_53():
    assert cf.trending_score(10**12, 0, 0, True, 0.0, 0.0) == cf.MAX_SCORE


def test_rank_orders_by_score_then_id_descending():
    now = datetime(2026, 1, 1, tzinfo=UTC)

    def eng(pid, likes, hours):
        return Engagement(pid, now - timedelta(hours=hours), likes, 0, 0, False)

    ranked = trending.rank([eng(1, 5, 1), eng(2, 5, 1), eng(3, 50, 1), eng(4, 0, 1)],
                           now.timestamp())
    assert [pid for _, pid in ranked] == [3, 2, 1, 4]
    assert ranked == sorted(ranked, reverse=True)


def test_created_us_is_exact_microseconds_since_the_epoch():
    assert created_us(datetime(1970, 1, 1, 0, 0, 1, 7, tzinfo=UTC)) == 1_000_007
    assert created_us(datetime(1970, 1, 1, 0, 0, 1, 7)) == 1_000_007  # naive: UTC
    plus1 = datetime(1970, 1, 1, 1, 0, 0, tzinfo=timezone(timedelta(hours=1)))
    assert created_us(plus1) == 0
    late = datetime(2255, 1, 1, tzinfo=UTC)
    assert created_us(late) < 2**53 and math.isclose(created_us(late) / 1e6,
                                                      late.timestamp())


def test_key_layout_is_pinned():
    ck = cf.CommunityKeys(Keyspace("hc:"))
    assert ck.recent == "hc:{cf}:recent"
    assert ck.trending == "hc:{cf}:trending"
    assert ck.trending_ref == "hc:{cf}:trending:ref"
    assert ck.trending_floor == "hc:{cf}:trending:floor"
    assert ck.latest_snapshot == "hc:{cf}:ts:latest"
    assert ck.snapshot(12) == "hc:{cf}:ts:12"
    assert ck.counts == "hc:{cf}:counts"
    assert ck.author(5) == "hc:{cf}:a:5"
    assert ck.followees(42) == "hc:{u:42}:cf:followees"
    assert ck.collectives(42) == "hc:{u:42}:cf:colls"
    assert ck.blocked(42) == "hc:{u:42}:cf:blocked"
    assert cf.posts_scope().row_name == "cf|posts"
    assert cf.author_scope(5).row_name == "cf|a:5"
    assert cf.follows_scope(42).row_name == "u:42|cf_follows"
    assert cf.colls_scope(42).row_name == "u:42|cf_colls"
    assert cf.blocked_scope(42).row_name == "u:42|cf_blocked"
    # Members sort numerically among equal scores: ids zero-padded to 20 digits.
    assert cf.member(7) == "00000000000000000007"
    assert sorted([cf.member(10), cf.member(9)]) == [cf.member(9), cf.member(10)]


def test_floor_codec_round_trips():
    for floor in [(0, 1), (2**53 - 1, 99)]:
        assert cf.decode_floor(cf.encode_floor(floor)) == floor
        assert cf.decode_floor(cf.encode_floor(floor).encode()) == floor
    assert cf.decode_floor(cf.encode_floor(None)) is None


# --- a page's walk -------------------------------------------------------------------------


class ScriptedSource(Source):
    """Keys ``(n, n)`` from ``top`` down to 1, ``exact`` as given."""

    def __init__(self, top: int, exact: bool = False) -> None:
        self.keys = [(n, n) for n in range(top, 0, -1)]
        self.exact = exact
        self.calls: list[int] = []

    def next_keys(self, after, n):
        self.calls.append(n)
        rest = [k for k in self.keys if after is None or k < after]
        return rest[:n]


def load(ids):
    """A database that "holds" every post id, in collective 1 when the id is even."""
    return {i: SimpleNamespace(collective_id=1 if i % 2 == 0 else None) for i in ids}


def test_collect_stops_after_limit_and_resumes_after_the_last_post():
    source = ScriptedSource(50)
    rows, resume = walk.collect(source, None, 5, Visibility.of(None), False, load)
    assert [k for k, _ in rows] == [(n, n) for n in range(50, 45, -1)]
    assert resume == (46, 46)
    assert source.calls == [6]
    rows, resume = walk.collect(source, (3, 3), 5, Visibility.of(None), False, load)
    assert [k for k, _ in rows] == [(2, 2), (1, 1)] and resume is None  # the end


def test_collect_keeps_what_the_viewer_sees_within_the_scan_budget(monkeypatch):
    monkeypatch.setattr(walk, "SCAN_BUDGET", 30)
    source = ScriptedSource(100)
    # Only odd ids are public: a page of 20 needs 40 keys, more than the budget.
    rows, resume = walk.collect(source, None, 20, PUBLIC, False, load)
    assert all(k[1] % 2 for k, _ in rows) and len(rows) == 15
    assert resume == (71, 71)  # after the last key examined
    assert source.calls == [21, 9]  # limit + 1, then doubled but cut to the budget left
    # A filtered walk over an inexact source starts with 4 x (limit + 1) keys.
    source = ScriptedSource(100)
    rows, _ = walk.collect(source, None, 20, PUBLIC, True, load)
    assert source.calls == [84] and len(rows) == 20


def test_collect_ends_at_a_source_window():
    source = ScriptedSource(3, exact=True)
    source.more = (1, 1)
    rows, resume = walk.collect(source, None, 5, Visibility.of(None), False, load)
    assert len(rows) == 3 and resume == (1, 1)
