"""Activity feed endpoints (API section 2): contract, filters, counts, bad input, cache."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text

from cache import activity_feed as feed_cache
from cache import stats
from service import create_app
from service.activity_feed_ops import MAX_MARK_READ_IDS
from tests.support.activity_feed_truth import (
    api_summary,
    ids_of,
    make_item,
    strip_display,
    truth_items,
    truth_summary,
)

FEED = "/api/events/activity-feed/"


def _event(client, headers, **body):
    payload = {"user_id": 5, "event_type": "fast_join", "title": "Joined"} | body
    return client.post("/api/events/", json=payload, headers=headers)


def _count(path: str, outcome: str) -> float:
    return stats.CACHE_EVENTS.labels(path, outcome)._value.get()


# --- events ---------------------------------------------------------------------------------


def test_event_creates_its_item(client, admin_headers, auth, state):
    r = _event(client, admin_headers, description="d", data={"fast": 3},
               target_type="fast", target_id=3)
    assert r.status_code == 201
    event = r.get_json()
    assert event["id"] > 0 and event["created_at"].endswith("Z")
    assert event["activity_id"] > 0
    feed = client.get(FEED, headers=auth(5)).get_json()
    assert feed["count"] == 1 and feed["next"] is None and feed["previous"] is None
    item = feed["results"][0]
    assert item == {
        "id": event["activity_id"], "activity_type": "fast_join",
        "activity_type_display": "Joined Fast", "title": "Joined", "description": "d",
        "is_read": False, "read_at": None, "created_at": event["created_at"],
        "age_display": "just now", "data": {"fast": 3}, "target_type": "fast", "target_id": 3,
    }
    with state.db.session() as s:
        assert s.execute(text("SELECT source_event_id FROM activities")).scalar_one() == \
            event["id"]


def test_unknown_event_type_makes_an_event_item(client, admin_headers, auth):
    assert _event(client, admin_headers, event_type="prayer_logged").status_code == 201
    item = client.get(FEED, headers=auth(5)).get_json()["results"][0]
    assert item["activity_type"] == "event" and item["activity_type_display"] == "Event"


API_DISPLAY_NAMES = {  # API.md section 2, word for word
    "event": "Event", "fast_start": "Fast Started", "fast_join": "Joined Fast",
    "fast_leave": "Left Fast", "devotional_available": "Devotional Available",
    "milestone": "Milestone Reached", "fast_reminder": "Fast Reminder",
    "devotional_reminder": "Devotional Reminder",
}


def test_every_type_shows_its_display_name(client, admin_headers, auth):
    for activity_type in API_DISPLAY_NAMES:
        assert _event(client, admin_headers, user_id=6, event_type=activity_type
                      ).status_code == 201
    for _ in range(2):  # the second read comes from the cached recent list
        results = client.get(FEED + "?page_size=100", headers=auth(6)).get_json()["results"]
        assert {r["activity_type"]: r["activity_type_display"] for r in results} == \
            API_DISPLAY_NAMES
    recent = client.get(FEED + "summary/", headers=auth(6)).get_json()["recent_activity"]
    assert all(r["activity_type_display"] == API_DISPLAY_NAMES[r["activity_type"]]
               for r in recent) and len(recent) == 5


def test_event_needs_admin(client, auth):
    assert client.post("/api/events/", json={}).status_code == 401
    r = client.post("/api/events/", json={"user_id": 5, "event_type": "x", "title": "t"},
                    headers=auth(5))
    assert r.status_code == 403


EVENT_BAD_INPUT_IS_400_CASES = [
    {"user_id": 0}, {"user_id": 2**63}, {"user_id": "5"}, {"user_id": None},
    {"event_type": ""}, {"event_type": "Bad Type"}, {"event_type": "x" * 51},
    {"title": ""}, {"title": "x" * 301}, {"title": 7},
    {"data": [1, 2]}, {"data": {"blob": "x" * 9000}}, {"target_id": -1},
    {"target_type": ""}, {"surprise": 1},
]


def test_event_bad_input_is_400(client, admin_headers):
    for body in EVENT_BAD_INPUT_IS_400_CASES:
        r = _event(client, admin_headers, **body)
        assert r.status_code == 400, body
        assert r.get_json()["code"] == "validation_error"


# --- listing --------------------------------------------------------------------------------


@pytest.fixture
def feed_of_7(state):
    """User 7: 12 items, newest first: types alternate, 2 read."""
    types = ["milestone", "fast_start", "fast_reminder"]
    for i in range(12):
        make_item(state, 7, types[i % 3], days_ago=12 - i, title=f"item {i}")
    ids = ids_of(state, 7)
    from service import activity_feed_ops as ops

    ops.mark_read(state, 7, ids[:2])
    return ids


def test_listing_newest_first_with_pagination_links(client, auth, feed_of_7):
    h = auth(7)
    page1 = client.get(FEED + "?page_size=5", headers=h).get_json()
    assert page1["count"] == 12 and [i["id"] for i in page1["results"]] == feed_of_7[:5]
    assert page1["previous"] is None
    assert page1["next"].endswith(FEED + "?page_size=5&page=2")
    page3 = client.get(page1["next"].replace("page=2", "page=3"), headers=h).get_json()
    assert [i["id"] for i in page3["results"]] == feed_of_7[10:]
    assert page3["next"] is None and page3["previous"].endswith("page=2")
    r = client.get(FEED + "?page_size=5&page=4", headers=h)
    assert r.status_code == 404 and r.get_json()["code"] == "invalid_page"
    assert client.get(FEED, headers=h).get_json()["results"][0]["age_display"] == "1d ago"


def test_listing_filters(client, auth, feed_of_7, state):
    h = auth(7)
    truth = truth_items(state, 7)

    def ids(query: str) -> list[int]:
        r = client.get(FEED + query, headers=h)
        assert r.status_code == 200, r.get_json()
        body = r.get_json()
        assert body["count"] == len(body["results"])
        return [i["id"] for i in body["results"]]

    assert ids("?activity_type=milestone&page_size=100") == \
        [t["id"] for t in truth if t["activity_type"] == "milestone"]
    assert ids("?is_read=true") == feed_of_7[:2]
    assert ids("?is_read=false&page_size=100") == feed_of_7[2:]
    day = (datetime.now(UTC) - timedelta(days=3)).date().isoformat()
    assert ids(f"?start_date={day}&end_date={day}") == \
        [t["id"] for t in truth if t["created_at"].startswith(day)]
    since = (datetime.now(UTC) - timedelta(days=4, hours=12)).isoformat()
    assert ids(f"?start_date={since.replace('+00:00', 'Z')}&page_size=100") == feed_of_7[:4]
    assert ids("?activity_type=fast_start&is_read=false&page_size=100") == \
        [t["id"] for t in truth if t["activity_type"] == "fast_start" and not t["is_read"]]


LISTING_BAD_QUERY_IS_400_CASES = [
    "?page_size=101", "?page_size=0", "?page=0", "?page=x", "?activity_type=party",
    "?is_read=maybe", "?start_date=yesterday", "?start_date=2024-13-01",
    "?start_date=2024-02-02&end_date=2024-02-01",
]


def test_listing_bad_query_is_400(client, auth):
    for query in LISTING_BAD_QUERY_IS_400_CASES:
        r = client.get(FEED + query, headers=auth(7))
        assert r.status_code == 400, query
        assert r.get_json()["code"] == "validation_error"


def test_listing_needs_a_token(client):
    assert client.get(FEED).status_code == 401
    assert client.get(FEED + "summary/").status_code == 401


# --- summary and mark-read ----------------------------------------------------------------


def test_summary_matches_postgres(client, auth, feed_of_7, state):
    body = api_summary(client, auth(7))
    assert body == truth_summary(state, 7)
    assert body["total_items"] == 12 and body["unread_count"] == 10 and body["read_count"] == 2
    assert body["activity_types"] == {"milestone": 4, "fast_start": 4, "fast_reminder": 4}
    assert body["recent_ids"] == feed_of_7[:5]


def test_empty_feed_is_a_cache_hit(client, auth):
    h = auth(404)
    before = _count(feed_cache.SUMMARY_PATH, "hit")
    for _ in range(2):
        body = client.get(FEED + "summary/", headers=h).get_json()
        assert body == {"total_items": 0, "unread_count": 0, "read_count": 0,
                        "activity_types": {}, "recent_activity": []}
        assert client.get(FEED, headers=h).get_json()["count"] == 0
    assert _count(feed_cache.SUMMARY_PATH, "hit") == before + 1


def test_mark_read_counts_only_the_callers_unread_items(client, auth, state):
    for _ in range(3):
        make_item(state, 8)
        make_item(state, 9)
    mine, theirs = ids_of(state, 8), ids_of(state, 9)
    r = client.post(FEED + "mark-read/", headers=auth(8),
                    json={"activity_ids": [mine[0], mine[0], theirs[0], 2**62]})
    assert r.get_json() == {"message": "Marked 1 items as read", "updated_count": 1}
    again = client.post(FEED + "mark-read/", headers=auth(8), json={"activity_ids": [mine[0]]})
    assert again.get_json()["updated_count"] == 0
    assert truth_summary(state, 9)["unread_count"] == 3
    item = client.get(FEED + "?is_read=true", headers=auth(8)).get_json()["results"][0]
    assert item["is_read"] is True and item["read_at"].endswith("Z")
    r = client.post(FEED + "mark-read/", headers=auth(8), json={"mark_all": True})
    assert r.get_json()["updated_count"] == 2
    assert api_summary(client, auth(8)) == truth_summary(state, 8)
    assert api_summary(client, auth(9)) == truth_summary(state, 9)
    assert client.get(FEED + "?is_read=false", headers=auth(8)).get_json()["count"] == 0


MARK_READ_BAD_INPUT_IS_400_CASES = [
    {}, {"mark_all": False}, {"activity_ids": []}, {"activity_ids": [1], "mark_all": True},
    {"activity_ids": [0]}, {"activity_ids": ["1"]}, {"activity_ids": [2**63]},
    {"activity_ids": 5}, {"mark_all": "yes"}, {"mark_all": 1},
    {"activity_ids": list(range(1, MAX_MARK_READ_IDS + 2))},
]


def test_mark_read_bad_input_is_400(client, auth):
    for body in MARK_READ_BAD_INPUT_IS_400_CASES:
        r = client.post(FEED + "mark-read/", json=body, headers=auth(8))
        assert r.status_code == 400, body
        assert r.get_json()["code"] == "validation_error"


def test_mark_read_cap_is_inclusive(client, auth):
    r = client.post(FEED + "mark-read/", headers=auth(8),
                    json={"activity_ids": list(range(1, MAX_MARK_READ_IDS + 1))})
    assert r.status_code == 200 and r.get_json()["updated_count"] == 0


# --- generate / backfill --------------------------------------------------------------------


def _old_event(state, user_id: int, event_type: str, days_ago: float) -> int:
    with state.db.session() as s:
        event_id = s.execute(text(
            "INSERT INTO events (user_id, event_type, title, created_at)"
            " VALUES (:u, :t, 'old', now() - make_interval(days => :d)) RETURNING id"),
            {"u": user_id, "t": event_type, "d": days_ago}).scalar_one()
        s.commit()
    return event_id


def test_generate_backfills_never_twice(client, admin_headers, auth, state):
    _old_event(state, 11, "milestone", 2)
    _old_event(state, 11, "fast_join", 20)
    _old_event(state, 11, "fast_reminder", 40)  # past its 30-day retention: skipped
    _old_event(state, 11, "milestone", 70)  # outside days_back
    _old_event(state, 12, "milestone", 1)  # another user
    assert _event(client, admin_headers, user_id=11).status_code == 201  # has its item
    api_summary(client, auth(11))  # cached before the backfill
    r = client.post(FEED + "generate/", json={"user_id": 11, "days_back": 60},
                    headers=admin_headers)
    assert r.status_code == 200
    body = r.get_json()
    assert body["created_count"] == 2
    assert body["message"] == "Generated 2 activity feed items for user 11"
    start = datetime.fromisoformat(body["date_range"]["start"])
    end = datetime.fromisoformat(body["date_range"]["end"])
    assert timedelta(days=59, hours=23) < end - start <= timedelta(days=60)
    again = client.post(FEED + "generate/", json={"user_id": 11, "days_back": 60},
                        headers=admin_headers)
    assert again.get_json()["created_count"] == 0
    assert api_summary(client, auth(11)) == truth_summary(state, 11)
    assert truth_summary(state, 11)["total_items"] == 3
    assert truth_summary(state, 12)["total_items"] == 0


def test_generate_skips_archived_events(client, admin_headers, state):
    _old_event(state, 13, "milestone", 10)
    body = {"user_id": 13, "days_back": 30}
    assert client.post(FEED + "generate/", json=body,
                       headers=admin_headers).get_json()["created_count"] == 1
    from service import activity_feed_ops as ops

    assert ops.archive(state, 5).moved == 1
    assert client.post(FEED + "generate/", json=body,
                       headers=admin_headers).get_json()["created_count"] == 0


GENERATE_BAD_INPUT_IS_400_CASES = [
    {}, {"user_id": 0}, {"user_id": 1, "days_back": 0}, {"user_id": 1, "days_back": 99999},
    {"user_id": 1, "days_back": "7"},
]


def test_generate_bad_input_is_400(client, admin_headers):
    for body in GENERATE_BAD_INPUT_IS_400_CASES:
        assert client.post(FEED + "generate/", json=body, headers=admin_headers).status_code == 400


def test_generate_needs_admin(client, auth):
    r = client.post(FEED + "generate/", json={"user_id": 1, "days_back": 3}, headers=auth(1))
    assert r.status_code == 403


FAN_OUT_BAD_INPUT_IS_400_CASES = [
    {"user_ids": [], "activity_type": "milestone", "title": "t"},
    {"user_ids": list(range(1, 10_002)), "activity_type": "milestone", "title": "t"},
    {"user_ids": [1], "activity_type": "party", "title": "t"},
    {"user_ids": [0], "activity_type": "milestone", "title": "t"},
    {"user_ids": [1], "activity_type": "milestone"},
]


def test_fan_out_bad_input_is_400(client, admin_headers):
    for body in FAN_OUT_BAD_INPUT_IS_400_CASES:
        r = client.post(FEED + "items/", json=body, headers=admin_headers)
        assert r.status_code == 400, r.get_json()


# --- the cache --------------------------------------------------------------------------------


def test_hits_cost_one_round_trip(client, auth, feed_of_7):
    h = auth(7)
    client.get(FEED, headers=h)  # fill
    for path, url in ((feed_cache.PAGE_PATH, FEED + "?page_size=20"),
                      (feed_cache.PAGE_PATH, FEED + "?is_read=false&page_size=100"),
                      (feed_cache.SUMMARY_PATH, FEED + "summary/")):
        hits = _count(path, "hit")
        calls = stats.REDIS_CALLS.labels(path)._value.get()
        assert client.get(url, headers=h).status_code == 200
        assert _count(path, "hit") == hits + 1
        assert stats.REDIS_CALLS.labels(path)._value.get() == calls + 1


def test_listing_assembled_without_a_dump_matches_its_schema(client, auth, state, feed_of_7):
    """Pages are encoded as built, not dumped by ``ListOut``: cached or from Postgres, the
    body is what the schema would have made of it."""
    from service.activity_feed import ListOut

    make_item(state, 7, "milestone", days_ago=0.5, data={"fast": 7, "nested": {"a": [1]}},
              target_type="fast", target_id=3, description="d")
    schema = ListOut()
    for url in ("?page_size=5", "?page_size=5", "?is_read=false&page_size=3",
                "?page_size=5&page=2", "?activity_type=milestone"):
        r = client.get(FEED + url, headers=auth(7))
        assert r.status_code == 200 and r.mimetype == "application/json"
        body = r.get_json()
        assert schema.validate(body) == {}, url
        assert body == schema.dump(schema.load(body)), url
    first = client.get(FEED + "?page_size=5", headers=auth(7)).get_json()
    assert first["results"][0]["data"] == {"fast": 7, "nested": {"a": [1]}}
    assert first["results"][0]["activity_type_display"] == "Milestone Reached"


def test_a_write_keeps_the_summary_a_hit_and_a_longer_page_refills(client, auth, state,
                                                                      feed_of_7):
    h = auth(7)
    client.get(FEED + "?page_size=20", headers=h)  # fill: all 12 items held
    client.post(FEED + "mark-read/", json={"activity_ids": feed_of_7[5:6]}, headers=h)
    # The write set the counters and the newest 5 items: the summary and short pages hit...
    for path, url in ((feed_cache.SUMMARY_PATH, FEED + "summary/"),
                      (feed_cache.PAGE_PATH, FEED + "?page_size=5")):
        hits, misses = _count(path, "hit"), _count(path, "miss")
        assert client.get(url, headers=h).status_code == 200
        assert (_count(path, "hit"), _count(path, "miss")) == (hits + 1, misses), url
    assert api_summary(client, h) == truth_summary(state, 7)
    # ...a page of more than 5 is a miss that refills the value, then a hit.
    for outcome in ("miss", "hit"):
        before = _count(feed_cache.PAGE_PATH, outcome)
        page = client.get(FEED + "?page_size=20", headers=h).get_json()
        assert _count(feed_cache.PAGE_PATH, outcome) == before + 1
        assert strip_display(page["results"]) == truth_items(state, 7, limit=20)
        unread = client.get(FEED + "?is_read=false", headers=h).get_json()
        assert strip_display(unread["results"]) == truth_items(state, 7, unread_only=True)
        assert unread["count"] == 9


def test_unread_items_older_than_the_cached_items(client, auth, state):
    """Of 130 items only the newest 100 are held; the unread listing then has a line of its
    own when unread items are older than those (here 3 of the oldest and 2 recent)."""
    user, n = 8, feed_cache.PAGE_CAP + 30
    now = datetime.now(UTC)
    with state.db.session() as s:
        s.execute(text(
            "INSERT INTO activities (user_id, activity_type, title, is_read, read_at,"
            " created_at) SELECT :u, 'milestone', 'i' || g, g NOT IN (1, 2, 3, 120, 125),"
            " CASE WHEN g IN (1, 2, 3, 120, 125) THEN NULL ELSE :now END,"
            " :now - make_interval(mins => :n - g) FROM generate_series(1, :n) g"),
            {"u": user, "n": n, "now": now})
        s.commit()
    h = auth(user)
    for size in (20, 2, 100):  # the first fills
        unread = client.get(FEED + f"?is_read=false&page_size={size}", headers=h).get_json()
        assert unread["count"] == 5
        assert strip_display(unread["results"]) == \
            truth_items(state, user, unread_only=True, limit=size)
        page = client.get(FEED + f"?page_size={size}", headers=h).get_json()
        assert page["count"] == n
        assert strip_display(page["results"]) == truth_items(state, user, limit=size)
    raw = state.cache.redis.get(feed_cache.feed_key(state.cache.keys, user))
    assert raw.count(b"\n") == 3  # counters, newest 5, 95 more, the unread line
    assert _count(feed_cache.PAGE_PATH, "miss") >= 1
    # Reading the oldest unread item's state change through the cache:
    oldest = truth_items(state, user, unread_only=True)[-1]["id"]
    client.post(FEED + "mark-read/", json={"activity_ids": [oldest]}, headers=h)
    unread = client.get(FEED + "?is_read=false", headers=h).get_json()
    assert strip_display(unread["results"]) == truth_items(state, user, unread_only=True)
    assert api_summary(client, h) == truth_summary(state, user)


def test_writes_keep_cached_answers_exact(client, auth, admin_headers, state):
    h = auth(5)
    for i in range(3):
        _event(client, admin_headers, title=f"e{i}")
    for _ in range(2):  # warm, then hit
        client.get(FEED, headers=h)
        client.get(FEED + "?is_read=false", headers=h)
        api_summary(client, h)
    client.post(FEED + "mark-read/", json={"activity_ids": ids_of(state, 5)[:1]}, headers=h)
    _event(client, admin_headers, title="late")
    assert api_summary(client, h) == truth_summary(state, 5)
    assert strip_display(client.get(FEED, headers=h).get_json()["results"]) == \
        truth_items(state, 5)[:20]
    assert strip_display(client.get(FEED + "?is_read=false", headers=h).get_json()["results"]) \
        == truth_items(state, 5, unread_only=True)


def test_redis_down_gives_the_same_answers(client, auth, settings, feed_of_7):
    h = auth(7)
    queries = ["", "?is_read=false", "?page_size=3&page=2", "?activity_type=milestone",
               "?page_size=100"]
    cached = {q: client.get(FEED + q, headers=h).get_json() for q in queries}
    cached["summary"] = client.get(FEED + "summary/", headers=h).get_json()
    down = create_app({"SETTINGS": settings.replace(redis_url="redis://127.0.0.1:1/0"),
                       "TESTING": True})
    try:
        c2 = down.test_client()
        for q in queries:
            assert c2.get(FEED + q, headers=h).get_json() == cached[q], q
        assert c2.get(FEED + "summary/", headers=h).get_json() == cached["summary"]
        r = c2.post(FEED + "mark-read/", json={"mark_all": True}, headers=h)
        assert r.status_code == 200 and r.get_json()["updated_count"] == 10
    finally:
        down.extensions["hc"].close()
    # The outbox relay brings the cache up to date with the write Redis missed.
    from cache.outbox import relay_outbox

    state = client.application.extensions["hc"]
    relay_outbox(state.db, state.applier, min_age=0)
    assert api_summary(client, h) == truth_summary(state, 7)
    assert client.get(FEED + "?is_read=false", headers=h).get_json()["count"] == 0


def test_cache_mode_off_same_answers(client, auth, settings, feed_of_7):
    h = auth(7)
    on = client.get(FEED + "summary/", headers=h).get_json()
    off = create_app({"SETTINGS": settings.replace(cache_mode="off"), "TESTING": True})
    try:
        assert off.test_client().get(FEED + "summary/", headers=h).get_json() == on
    finally:
        off.extensions["hc"].close()
