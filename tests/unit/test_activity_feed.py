"""Activity feed pure parts (API section 2): the age display and the key layout."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from cache import activity_feed as feed_cache
from cache.keys import Keyspace
from service.activity_feed import age_display


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

def test_key_formats():

    keys = Keyspace("hc:")
    assert feed_cache.feed_key(keys, 42) == "hc:{u:42}:act:feed"
    assert feed_cache.all_keys(keys, 42) == ["hc:{u:42}:act:feed"]
    assert feed_cache.scope(42).row_name == "u:42|activity"
