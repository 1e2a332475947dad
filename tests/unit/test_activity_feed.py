"""Activity feed pure parts (API section 2): the age display and the key layout."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from cache import activity_feed as feed_cache
from cache.keys import Keyspace
from service.activity_feed import age_display
from storage.activity_feed import FeedCounts


def test_age_display():
    now = datetime(2025, 1, 31, 12, tzinfo=UTC)

    def ago(**delta) -> str:
        return age_display((now - timedelta(**delta)).isoformat(), now)

    assert ago(seconds=5) == "just now"
    assert ago(seconds=-5) == "just now"  # clock skew: never "-1m ago"
    assert ago(minutes=3) == "3m ago"
    assert ago(hours=2, minutes=59) == "2h ago"
    assert ago(days=3) == "3d ago"
    assert ago(days=15) == "2w ago"
    assert ago(days=95) == "3mo ago"
    assert ago(days=800) == "2y ago"
    # The boundaries: each unit starts at its first whole unit.
    for delta, shown in (({"seconds": 59.9}, "just now"), ({"seconds": 60}, "1m ago"),
                         ({"seconds": 3599}, "59m ago"), ({"seconds": 3600}, "1h ago"),
                         ({"seconds": 86399}, "23h ago"), ({"days": 1}, "1d ago"),
                         ({"days": 7, "seconds": -1}, "6d ago"), ({"days": 7}, "1w ago"),
                         ({"days": 30}, "1mo ago"), ({"days": 364}, "12mo ago"),
                         ({"days": 365}, "1y ago"), ({"microseconds": -1}, "just now"),
                         ({"days": -3}, "just now")):
        assert ago(**delta) == shown, delta

def test_key_formats():

    keys = Keyspace("hc:")
    assert feed_cache.feed_key(keys, 42) == "hc:{u:42}:act:feed"
    assert feed_cache.all_keys(keys, 42) == ["hc:{u:42}:act:feed"]
    assert feed_cache.scope(42).row_name == "u:42|activity"


def _item(i: int, is_read: bool, **extra) -> dict:
    return {"id": i, "activity_type": "milestone", "title": f"t{i}", "description": None,
            "is_read": is_read, "read_at": "2025-01-02T03:04:05.123456Z" if is_read else None,
            "created_at": "2025-01-01T00:00:00Z", "data": None, "target_type": None,
            "target_id": None, **extra}


def test_items_pack_without_names_and_trailing_nulls_and_unpack_equal():
    plain, full = _item(1, False), _item(2, True, description="d", data={"k": [1]},
                                         target_type="fast", target_id=9)
    assert feed_cache.pack_item(plain) == [1, "milestone", "t1", False, "2025-01-01T00:00:00Z"]
    for item in (plain, full, _item(3, False, target_id=4)):
        assert feed_cache.unpack_item(feed_cache.pack_item(item)) == item
        assert list(feed_cache.unpack_item(feed_cache.pack_item(item))) == list(item)


def _value(items, total, unread, with_unread_line=None) -> feed_cache.Cached:
    counts = FeedCounts(total, unread, {"milestone": total} if total else {})
    raw = feed_cache.encode(counts, items, with_unread_line)
    return feed_cache.Cached.decode(raw)


def ids(rows) -> list[int]:
    return [row[0] for row in rows]


def test_a_value_answers_only_the_pages_it_holds():
    items = [_item(i, is_read=i % 3 != 0) for i in range(10, 0, -1)]  # unread: 9, 6, 3
    whole = _value(items, total=10, unread=3)
    assert ids(whole.page(False, 20)) == list(range(10, 0, -1))  # all 10 of 10
    assert ids(whole.page(True, 20)) == [9, 6, 3]  # every unread item is among them
    # The newest 10 of 50 items: pages up to 10 only; unread ones if 3 hold the page.
    part = _value(items, total=50, unread=7)
    assert ids(part.page(False, 10)) == list(range(10, 0, -1))
    assert part.page(False, 11) is None
    assert ids(part.page(True, 2)) == [9, 6]
    assert part.page(True, 4) is None
    # The unread line answers the unread listing when unread items are older.
    older = [_item(i, False) for i in (9, 6, 3, -5, -8)]
    lined = _value(items, total=150, unread=5, with_unread_line=older)
    assert ids(lined.page(True, 20)) == [9, 6, 3, -5, -8]
    empty = _value([], total=0, unread=0)
    assert empty.page(False, 20) == [] and empty.page(True, 20) == []


def test_the_head_gives_the_total_to_the_live_events():
    raw = feed_cache.encode(FeedCounts(1234, 5, {"milestone": 1234}), [_item(1, False)])
    assert feed_cache.total_of(raw[:24]) == 1234
    assert feed_cache.total_of(b"") is None and feed_cache.total_of(None) is None
