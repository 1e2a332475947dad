"""The fixed cost cuts of issue 15 keep behaviour through the API: an expired token is
still refused, shared argument schemas parse each request on its own (the token memory
itself: tests/unit/test_tokens.py)."""

from __future__ import annotations

from service.auth import make_token
from tests.support.auth import JWT_SECRET


def test_expired_token_still_refused_through_the_api(client, auth):
    headers = auth(4)
    assert client.get("/api/events/activity-feed/summary/", headers=headers).status_code == 200
    expired = {"Authorization": f"Bearer {make_token(JWT_SECRET, 4, ttl=-1)}"}
    r = client.get("/api/events/activity-feed/summary/", headers=expired)
    assert r.status_code == 401
    assert r.get_json()["code"] == "token_expired"


def test_a_shared_query_schema_parses_each_request_on_its_own(client, auth, admin_headers):
    from tests.support.group_feed import make_group, unread

    group = make_group(client, admin_headers, members=[2])
    assert unread(client, auth(2), group) == 0
    assert unread(client, auth(2)) == {"groups": {str(group): 0}, "total": 0}
    bad = client.get("/api/v1/messaging/feed/unread-count/", query_string={"group": "x"},
                     headers=auth(2))
    assert bad.status_code == 400
    assert unread(client, auth(2), group) == 0


def test_hot_reads_assembled_without_a_dump_match_their_schemas(client, auth, admin_headers):
    """Unread counts and the activity summary are encoded as built, not dumped by their
    response schema: the bodies are what the schema would have made of them."""
    from service.activity_feed import SummaryOut
    from service.group_feed import UnreadOut
    from tests.support.group_feed import make_group, post_item

    group = make_group(client, admin_headers, members=[2])
    post_item(client, admin_headers, group)
    for _ in range(2):
        assert client.post("/api/events/", json={
            "user_id": 2, "event_type": "fast_join", "title": "Joined",
            "data": {"fast": 7, "nested": {"a": [1, 2]}}}, headers=admin_headers
        ).status_code == 201
    for _ in range(2):  # cold, then warm
        counts = client.get("/api/v1/messaging/feed/unread-count/", headers=auth(2))
        one = client.get("/api/v1/messaging/feed/unread-count/",
                         query_string={"group": group}, headers=auth(2))
        summary = client.get("/api/events/activity-feed/summary/", headers=auth(2))
        for response, schema in ((counts, UnreadOut()), (one, UnreadOut()),
                                 (summary, SummaryOut())):
            assert response.status_code == 200
            assert response.mimetype == "application/json"
            body = response.get_json()
            assert schema.validate(body) == {}
            assert body == schema.dump(schema.load(body))
    assert counts.get_json() == {"groups": {str(group): 1}, "total": 1}
    assert one.get_json() == {"group": group, "unread_count": 1}
    assert summary.get_json()["total_items"] == 2
    assert summary.get_json()["recent_activity"][0]["data"] == {"fast": 7,
                                                                "nested": {"a": [1, 2]}}


def test_an_empty_query_string_parses_to_fresh_defaults(app, auth):
    """The parser answers an empty query string from memory: each request gets its own
    copy of the defaults, and a schema that requires a field still refuses it."""
    from service.api import Blueprint
    from service.recent_reels import RecentReelsQuery

    parser = Blueprint.ARGUMENTS_PARSER
    with app.test_request_context("/"):
        first = parser.parse(RecentReelsQuery, location="query")
        first["page"] = 99
        assert parser.parse(RecentReelsQuery, location="query")["page"] == 1
    with app.test_request_context("/?page=3"):
        assert parser.parse(RecentReelsQuery, location="query")["page"] == 3
    client = app.test_client()
    for _ in range(2):
        r = client.post("/api/v1/messaging/feed/mark-all-viewed/", headers=auth(2))
        assert r.status_code == 400
        assert "group" in r.get_json()["details"]  # GroupQuery requires it


def test_each_request_logs_one_json_line(client, auth, caplog):
    """One JSON line per request on ``service.access``: endpoint, status, latency, and the
    cache outcomes (one per key read: two groups' read states and live bitmaps)."""
    import json
    import logging

    from tests.support.group_feed import make_group

    admin = auth(1, admin=True)
    groups = [make_group(client, admin, members=[2]) for _ in range(2)]
    client.get("/api/v1/messaging/feed/unread-count/", headers=auth(2))  # fills
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="service.access"):
        r = client.get("/api/v1/messaging/feed/unread-count/", headers=auth(2))
    assert r.get_json()["groups"] == {str(g): 0 for g in groups}
    lines = [rec.getMessage() for rec in caplog.records if rec.name == "service.access"]
    assert len(lines) == 1, lines
    entry = json.loads(lines[0])
    assert entry["endpoint"] == "group_feed.unread_count" and entry["status"] == 200
    assert entry["method"] == "GET" and entry["ms"] >= 0
    assert sorted(entry["cache"]) == sorted(
        ["memberships:hit"] + ["group_feed.unread:hit", "group_feed.live:hit"] * 2)


def test_log_lines_keep_the_standard_time_format():
    """The formatter that makes the time's text once per second writes what
    ``logging.Formatter`` writes."""
    import logging

    from service import LineFormatter

    ours = LineFormatter()
    standard = logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s")
    for created in (1_750_000_000.0, 1_750_000_000.999, 1_750_000_001.5, 1_750_000_000.25):
        record = logging.LogRecord("service.access", logging.INFO, __file__, 1, "line", None,
                                   None)
        record.created, record.msecs = created, (created - int(created)) * 1000
        assert ours.format(record) == standard.format(record)
