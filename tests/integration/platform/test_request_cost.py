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


def test_the_direct_access_line_is_what_the_formatter_writes(monkeypatch):
    """With logging as ``configure_logging`` leaves it, the access line is written without
    a LogRecord: the same text as ``logger.info`` through the handler's formatter."""
    import io
    import logging

    from service import LineFormatter, write_access_line

    ours = LineFormatter()
    for created in (1_750_000_000.0, 1_750_000_000.999, 1_750_000_001.5, 1_750_000_000.25):
        record = logging.LogRecord("service.access", logging.INFO, __file__, 1, "x y", None,
                                   None)
        record.created = created
        record.msecs = int((created - int(created)) * 1000) + 0.0
        assert ours.access_line("service.access", "x y", created) == ours.format(record)

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(LineFormatter())
    handler._hc = True  # type: ignore[attr-defined]
    monkeypatch.setattr(logging.root, "handlers", [handler])
    logger = logging.getLogger("service.access")
    monkeypatch.setattr(logger, "handlers", [])
    calls = []
    monkeypatch.setattr(logger, "info", lambda msg: calls.append(msg))
    write_access_line(logger, '{"status":200}')
    assert calls == []  # written directly
    [line] = stream.getvalue().splitlines()
    assert line.endswith(' INFO service.access {"status":200}'), line

    # Anything else in the way (a capture handler, a filter): through logger.info.
    handler.addFilter(lambda record: True)
    write_access_line(logger, "second")
    assert calls == ["second"]
    assert stream.getvalue().count("\n") == 1


def test_async_views_still_run_and_plain_ones_are_remembered():
    """``App.ensure_sync`` keeps a plain function as it is (remembered) and still wraps a
    coroutine function to run it."""
    from service import App

    app = App(__name__)

    def plain():
        return 1

    async def coro():
        return 2

    assert app.ensure_sync(plain) is plain and plain in app._plain
    assert app.ensure_sync(plain) is plain
    try:
        wrapped = app.ensure_sync(coro)
    except RuntimeError:  # Flask's async extra (asgiref) not installed: refused, as before
        return
    assert wrapped is not coro and coro not in app._plain
    assert wrapped() == 2


def test_remembered_query_answers_are_per_query_and_never_shared(monkeypatch):
    """A ``MEMO_QUERY`` schema's answers are remembered per raw query string (bounded);
    each caller gets its own copy, a refused query is refused every time, and a schema
    without the mark is parsed on every request."""
    from flask import Flask
    from marshmallow import Schema, ValidationError, fields, post_load, validate

    from service import api

    loads = []

    class Memo(Schema):
        MEMO_QUERY = True
        page = fields.Integer(load_default=1, validate=validate.Range(1, 10))
        tags = fields.String(load_default="")

        @post_load
        def _count(self, data, **_):
            loads.append(dict(data))
            data["tags"] = tuple(t for t in data["tags"].split(",") if t)
            return data

    class Plain(Memo):
        MEMO_QUERY = False

    parser = api.SchemaOnceParser(error_handler=None)

    @parser.error_handler
    def _raise(error, req, schema, *, error_status_code, error_headers):
        raise ValidationError(error.messages)

    app = Flask(__name__)

    def parse(schema, query):
        with app.test_request_context("/?" + query):
            return parser.parse(schema, location="query")

    first = parse(Memo, "page=2&tags=a,b")
    assert first == {"page": 2, "tags": ("a", "b")}
    first["page"] = 99  # a handler changing its answer changes nobody else's
    assert parse(Memo, "page=2&tags=a,b") == {"page": 2, "tags": ("a", "b")}
    assert parse(Memo, "page=3") == {"page": 3, "tags": ()}
    assert len(loads) == 2  # the repeated query was not parsed again
    for _ in range(2):
        try:
            parse(Memo, "page=11")
        except ValidationError:
            pass
        else:
            raise AssertionError("page=11 was accepted")
    assert len(loads) == 2  # refused by the validator, nothing remembered
    parse(Plain, "page=2")
    parse(Plain, "page=2")
    assert len(loads) == 4

    monkeypatch.setattr(api, "MEMO_QUERIES", 3)
    for page in range(1, 6):
        parse(Memo, f"page={page}&tags=x")
    memo = next(m for k, m in parser._queries.items() if k[0] is Memo)
    assert len(memo) == 3 and b"page=1&tags=x" not in memo


def test_recently_viewed_query_parse_is_remembered_yet_exact(client, auth, admin_headers):
    """Through the API: the same query answers as before, a bad one is a 400 each time."""
    from tests.support.recent_reels import make_reels

    [reel] = make_reels(client, admin_headers, 1)
    headers = auth(7)
    assert client.post(f"/api/reels/{reel}/view", json={"view_duration": 3},
                       headers=headers).status_code == 200
    for _ in range(2):
        r = client.get("/api/reels/recently-viewed?page=1&per_page=5&fields=reel_id",
                       headers=headers)
        assert r.status_code == 200
        assert r.get_json()["data"]["reels"] == [{"reel_id": reel}]
        bad = client.get("/api/reels/recently-viewed?per_page=500", headers=headers)
        assert bad.status_code == 400 and "per_page" in bad.get_json()["details"]
