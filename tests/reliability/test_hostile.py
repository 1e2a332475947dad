"""Hostile input and access (items 10 and 11).

Access: every endpoint that takes an id (in the path, the query or the body) is called by
a stranger (a signed-in user who is neither the owner, a member nor an admin) with
someone else's object: it answers 403/404 and the database does not change, unless the
endpoint is in ``OPEN_TO_ANY_USER`` (it acts on the caller's own relation to a public
object: liking a post, following a user...). A new id-taking endpoint is protected until
listed there. Admin endpoints refuse non-admins; bad tokens get 401.

Limits: bodies over 1 MiB (413), lists over the documented caps, deep JSON, huge integers,
NUL characters get a clear 4xx and store nothing; unicode round-trips intact.
"""

from __future__ import annotations

import contextlib
import json
import time
import warnings
from datetime import UTC, datetime, timedelta

import jwt
import pytest
import requests
from sqlalchemy import text

from service import create_app
from tests.support.auth import JWT_SECRET, bearer
from tests.support.servers import web

OWNER, MEMBER, STRANGER = 501, 502, 777
ADMIN = bearer(1, admin=True)

# (method, rule) a stranger may call on another user's public object.
OPEN_TO_ANY_USER = {
    ("POST", "/api/collectives/<id:collective_id>/join/"),
    ("DELETE", "/api/collectives/<id:collective_id>/join/"),
    ("POST", "/api/fellows/<id:user_id>/"),
    ("DELETE", "/api/fellows/<id:user_id>/"),
    ("POST", "/api/posts/<id:post_id>/heart/"),
    ("DELETE", "/api/posts/<id:post_id>/heart/"),
    ("POST", "/api/posts/<id:post_id>/praise/"),
    ("POST", "/api/posts/<id:post_id>/trophy/"),
    ("POST", "/api/reels/<id:reel_id>/like"),
    ("DELETE", "/api/reels/<id:reel_id>/like"),
    ("POST", "/api/reels/<id:reel_id>/view"),
    ("POST", "/community/posts/<id:post_id>/comments"),
    ("GET", "/community/posts/<id:post_id>/engagement"),
    ("POST", "/community/posts/<id:post_id>/like"),
    ("DELETE", "/community/posts/<id:post_id>/like"),
    ("POST", "/community/posts/<id:post_id>/view"),
    ("POST", "/community/users/<id:user_id>/follow"),
    ("DELETE", "/community/users/<id:user_id>/follow"),
}

ADMIN_ONLY = [
    ("POST", "/api/v1/groups/", {"name": "x"}),
    ("POST", "/api/v1/groups/{group}/members/", {"user_id": STRANGER}),
    ("DELETE", "/api/v1/groups/{group}/members/{owner}/", None),
    ("POST", "/api/reels/", {"video_url": "https://x/v.mp4", "duration": 5,
                             "is_available": True}),
    ("POST", "/api/collectives/", {"name": "x"}),
    ("POST", "/api/events/", {"user_id": STRANGER, "event_type": "milestone", "title": "x"}),
    ("POST", "/api/events/activity-feed/items/", {"user_ids": [STRANGER],
                                                  "activity_type": "milestone", "title": "x"}),
    ("POST", "/api/events/activity-feed/generate/", {"user_id": OWNER, "days_back": 3}),
]

TABLES = ("groups", "group_members", "feed_items", "feed_item_views", "events", "activities",
          "collectives", "collective_members", "posts", "post_likes", "post_praises",
          "post_trophies", "comments", "post_views", "follows", "fellows",
          "user_preferences", "reels", "reel_views", "reel_likes")


def fingerprint(app) -> dict[str, str]:
    """A digest of every data table (not users: a user row appears on first sight)."""
    out = {}
    with app.extensions["hc"].db.engine.connect() as conn:
        for table in TABLES:
            out[table] = conn.execute(text(
                f"SELECT md5(coalesce(string_agg(t::text, ',' ORDER BY t::text), '')) "
                f"FROM {table} t")).scalar()
    return out


@pytest.fixture
def world(app, client):
    """A group with its owner and a member, an item, a post, an activity, a reel."""
    group = client.post("/api/v1/groups/", headers=ADMIN, json={"name": "private"}).json["id"]
    for user in (OWNER, MEMBER):
        assert client.post(f"/api/v1/groups/{group}/members/", headers=ADMIN,
                           json={"user_id": user}).status_code in (200, 201)
    item = client.post("/api/v1/messaging/feed/", headers=bearer(OWNER), json={
        "group": group, "title": "secret", "content_type": "text"})
    assert item.status_code == 201, item.json
    post = client.post("/community/posts", headers=bearer(OWNER), json={"title": "mine"})
    assert post.status_code == 201, post.json
    event = client.post("/api/events/", headers=ADMIN, json={
        "user_id": OWNER, "event_type": "milestone", "title": "owner's"})
    assert event.status_code == 201, event.json
    activity = client.get("/api/events/activity-feed/", headers=bearer(OWNER)).json
    reel = client.post("/api/reels/", headers=ADMIN, json={
        "video_url": "https://x/r.mp4", "duration": 10, "is_available": True})
    collective = client.post("/api/collectives/", headers=ADMIN, json={"name": "c"})
    return {
        "group": group, "item_id": item.json["id"], "post_id": post.json["id"],
        "activity": activity["results"][0]["id"], "reel_id": reel.json["reel_id"],
        "collective_id": collective.json["id"], "user_id": OWNER, "owner": OWNER,
    }


def path_for(rule: str, world: dict) -> str:
    path = rule
    for name in ("item_id", "post_id", "reel_id", "collective_id", "user_id", "group_id"):
        value = world["group"] if name == "group_id" else world[name]
        path = path.replace(f"<id:{name}>", str(value))
    assert "<" not in path, rule
    return path


def test_every_id_endpoint_refuses_strangers(app, client, world):
    stranger = bearer(STRANGER)
    checked = []
    for rule in app.url_map.iter_rules():
        if "<id:" not in rule.rule:
            continue
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            if (method, rule.rule) in OPEN_TO_ANY_USER:
                continue
            if "/members/" in rule.rule:
                continue  # admin-only: test_admin_endpoints_refuse_non_admins
            before = fingerprint(app)
            r = client.open(path_for(rule.rule, world), method=method, headers=stranger,
                            json={})
            assert r.status_code in (403, 404), (method, rule.rule, r.status_code, r.json)
            assert r.is_json and "error" in r.json
            assert fingerprint(app) == before, (method, rule.rule)
            checked.append(f"{method} {rule.rule}")
    assert len(checked) >= 5, checked


def test_ids_in_query_and_body_refuse_strangers(app, client, world):
    stranger = bearer(STRANGER)
    g = world["group"]
    calls = [
        ("GET", f"/api/v1/messaging/feed/?group={g}", None),
        ("GET", f"/api/v1/messaging/feed/unread-count/?group={g}", None),
        ("POST", f"/api/v1/messaging/feed/mark-all-viewed/?group={g}", None),
        ("POST", "/api/v1/messaging/feed/", {"group": g, "title": "x", "content_type": "t"}),
    ]
    for method, path, body in calls:
        before = fingerprint(app)
        r = client.open(path, method=method, headers=stranger, json=body)
        assert r.status_code in (403, 404), (method, path, r.status_code)
        assert fingerprint(app) == before, path
    # Someone else's activity: "only the caller's unread items count".
    before = fingerprint(app)
    r = client.post("/api/events/activity-feed/mark-read/", headers=stranger,
                    json={"activity_ids": [world["activity"]]})
    assert r.status_code == 200 and r.json["updated_count"] == 0
    assert fingerprint(app) == before
    # The stranger's all-groups unread count does not mention the private group.
    r = client.get("/api/v1/messaging/feed/unread-count/", headers=stranger)
    assert r.status_code == 200 and str(g) not in r.json["groups"]


def test_admin_endpoints_refuse_non_admins(app, client, world):
    for user in (STRANGER, OWNER):
        for method, template, body in ADMIN_ONLY:
            before = fingerprint(app)
            path = template.format(**world)
            r = client.open(path, method=method, headers=bearer(user), json=body)
            assert r.status_code == 403, (user, method, path, r.status_code)
            assert fingerprint(app) == before, path
            assert client.open(path, method=method, json=body).status_code == 401


def _token(claims: dict, key: str = JWT_SECRET, alg: str = "HS256") -> str:
    return jwt.encode(claims, key, algorithm=alg)


def _raw_token(claims: dict, replace: dict[str, str]) -> str:
    """A correctly signed token whose payload JSON is edited as text (a 5,000-digit
    integer cannot be built as a Python int and serialised)."""
    import base64
    import hashlib
    import hmac

    def b64(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    payload = json.dumps(claims)
    for old, new in replace.items():
        payload = payload.replace(old, new)
    signing = f"{b64(json.dumps({'alg': 'HS256', 'typ': 'JWT'}).encode())}.{b64(payload.encode())}"
    signature = hmac.new(JWT_SECRET.encode(), signing.encode(), hashlib.sha256).digest()
    return f"{signing}.{b64(signature)}"


def _none_token(claims: dict) -> str:
    import base64

    def b64(data: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    return f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64(claims)}."


BAD_TOKENS = {
    "alg-none": lambda exp: _none_token({"sub": "1", "exp": exp, "role": "admin"}),
    "wrong-key": lambda exp: _token({"sub": "1", "exp": exp, "role": "admin"},
                                    key="wrong-key-" + "y" * 30),
    "expired": lambda exp: _token({"sub": "1", "exp": exp - 7200}),
    "no-exp": lambda exp: _token({"sub": "1"}),
    "no-sub": lambda exp: _token({"exp": exp}),
    "sub-not-integer": lambda exp: _token({"sub": "abc", "exp": exp}),
    "sub-float": lambda exp: _token({"sub": 1.5, "exp": exp}),
    "sub-negative": lambda exp: _token({"sub": "-4", "exp": exp}),
    "sub-zero": lambda exp: _token({"sub": "0", "exp": exp}),
    "sub-huge": lambda exp: _token({"sub": str(2**64), "exp": exp}),
    "sub-bool": lambda exp: _token({"sub": True, "exp": exp}),
    "sub-4301-digits": lambda exp: _token({"sub": "9" * 4301, "exp": exp}),  # int() refuses
    "sub-5000-digit-int": lambda exp: _raw_token({"sub": "SUB", "exp": exp},
                                                 {'"SUB"': "9" * 5000}),
    "sub-leading-zero": lambda exp: _token({"sub": "01", "exp": exp}),
    "sub-fullwidth": lambda exp: _token({"sub": "\uff11", "exp": exp}),
    "sub-plus-sign": lambda exp: _token({"sub": "+1", "exp": exp}),
    "alg-hs512": lambda exp: _token({"sub": "1", "exp": exp}, alg="HS512"),
    "garbage": lambda exp: "not.a.jwt",
}


def test_bad_tokens_refused(client):
    exp = int((datetime.now(UTC) + timedelta(hours=1)).timestamp())
    for name, make in BAD_TOKENS.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PyJWT warns about the HS512 key length
            headers = {"Authorization": f"Bearer {make(exp)}"}
        for method, path in (("GET", "/api/events/activity-feed/"),
                             ("POST", "/api/v1/groups/"),
                             ("GET", "/api/reels/recently-viewed")):
            r = client.open(path, method=method, headers=headers, json={"name": "x"})
            assert r.status_code == 401, (name, path, r.status_code)
            assert r.is_json and r.json["code"], name


def test_non_canonical_path_ids_are_404(client, world):
    """Only ASCII digits without a leading zero are an id: fullwidth digits, leading zeros
    and a sign name no object (404), never another spelling of one."""
    headers, post = bearer(MEMBER), world["post_id"]
    canonical = client.get(f"/community/posts/{post}/engagement", headers=headers)
    assert canonical.status_code == 200, canonical.get_data(as_text=True)
    for spelling in ("\uff10" * 2 + "\uff11", f"0{post}", f"00{post}", f"+{post}",
                     "\u0661", "9" * 4301):
        r = client.get(f"/community/posts/{spelling}/engagement", headers=headers)
        assert r.status_code == 404 and r.is_json, (spelling, r.status_code)


def test_links_never_reflect_the_host_header(client):
    """next / previous start with PUBLIC_BASE_URL whatever Host the client sends."""
    for i in range(2):
        assert client.post("/api/events/", headers=ADMIN, json={
            "user_id": 1, "event_type": "event", "title": f"t{i}"}).status_code == 201
        assert client.post("/community/posts", headers=bearer(2),
                           json={"title": f"p{i}"}).status_code == 201
    for path in ("/api/events/activity-feed/?page_size=1", "/api/posts/?page_size=1"):
        r = client.get(path, headers={**bearer(1), "Host": "evil.example",
                                      "X-Forwarded-Host": "evil.example"})
        assert r.status_code == 200, r.get_data(as_text=True)
        body = r.get_json()
        links = [body["next"], body.get("previous")]
        assert body["next"], body
        for link in filter(None, links):
            assert link.startswith("http://127.0.0.1:8000/"), link
            assert "evil" not in link


# --- limits ----------------------------------------------------------------------------------


def _counts(app) -> dict[str, int]:
    with app.extensions["hc"].db.engine.connect() as conn:
        return {t: conn.execute(text(f"SELECT count(*) FROM {t}")).scalar() for t in TABLES}


WRITES = [
    ("/community/posts", "title", {}),
    ("/api/v1/messaging/feed/", "title", {"content_type": "text"}),
    ("/api/events/", "title", {"user_id": OWNER, "event_type": "milestone"}),
    ("/api/reels/", "video_url", {"duration": 5, "is_available": True}),
]


def _write_body(world: dict, path: str, field: str, extra: dict, value) -> dict:
    body = {**extra, field: value}
    if path == "/api/v1/messaging/feed/":
        body["group"] = world["group"]
    return body


def _headers(path: str) -> dict[str, str]:
    return ADMIN if path in ("/api/events/", "/api/reels/") else bearer(OWNER)


def test_oversized_bodies_get_413(app, client, world):
    before = _counts(app)
    big = "x" * (1024 * 1024 + 10)
    for path, field, extra in WRITES:
        r = client.post(path, headers=_headers(path),
                        data=json.dumps(_write_body(world, path, field, extra, big)),
                        content_type="application/json")
        assert r.status_code == 413 and r.json["code"], path
    assert _counts(app) == before


OVER_CAP_BODIES = [
    ("/api/reels/views", {"views": [{"reel_id": 1}] * 101}),
    ("/api/events/activity-feed/mark-read/", {"activity_ids": list(range(1, 1002))}),
    ("/api/events/activity-feed/items/", {"user_ids": list(range(1, 10_002)),
                                          "activity_type": "milestone", "title": "x"}),
    ("/community/posts", {"title": "x", "tags": [f"t{i}" for i in range(21)]}),
]

OVER_CAP_QUERIES = [
    "/api/v1/messaging/feed/?group={group}&limit=201",
    "/api/events/activity-feed/?page_size=101",
    "/community/feed?limit=51",
    "/api/posts/?page_size=51",
    "/api/reels/recently-viewed?per_page=101",
    "/api/reels/recently-viewed?page=99999999999999999999999",
    "/api/v1/messaging/feed/?group=99999999999999999999999",
    "/api/events/activity-feed/?start_date=not-a-date",
]


def test_lists_and_queries_over_caps_get_400(app, client, world):
    before = _counts(app)
    for path, body in OVER_CAP_BODIES:
        r = client.post(path, headers=ADMIN if "items" in path else bearer(OWNER), json=body)
        assert r.status_code == 400 and r.json["code"], (path, r.status_code)
    assert _counts(app) == before
    for query in OVER_CAP_QUERIES:
        r = client.get(query.format(**world), headers=bearer(OWNER))
        assert r.status_code in (400, 404) and r.json["code"], (query, r.status_code)


def test_deep_json_and_huge_integers(app, client, world):
    before = _counts(app)
    deep = "[" * 5000 + "]" * 5000
    for path, _, _ in WRITES:
        r = client.post(path, headers=_headers(path), data=deep,
                        content_type="application/json")
        assert r.status_code == 400 and r.json["code"], path
    nested = {"title": "x", "event_type": "milestone", "user_id": OWNER, "data": {}}
    cursor = nested["data"]
    for _ in range(200):
        cursor["a"] = {}
        cursor = cursor["a"]
    r = client.post("/api/events/", headers=ADMIN, data=json.dumps(nested),
                    content_type="application/json")
    assert r.status_code == 400 and r.json["code"] == "json_too_deep", r.status_code
    def post(path, headers, body):  # the stdlib encoder: it writes integers of any size
        return client.post(path, headers=headers, data=json.dumps(body),
                           content_type="application/json")

    for value in (2**63, 2**64, 10**100, -1, 0, 1.5, 1e308, "1", True):
        r = post("/api/events/", ADMIN, {"user_id": value, "event_type": "milestone",
                                         "title": "x"})
        assert r.status_code == 400, (value, r.status_code)
        r = post("/api/v1/messaging/feed/", bearer(OWNER), {"group": value, "title": "x",
                                                            "content_type": "text"})
        assert r.status_code in (400, 404), (value, r.status_code)
    for path in ("/community/posts/18446744073709551616/like",
                 "/api/reels/99999999999999999999999999/view",
                 "/api/v1/messaging/feed/0/mark-viewed/"):
        assert client.post(path, headers=bearer(OWNER), json={}).status_code == 404, path
    r = post("/api/reels/", ADMIN, {"video_url": "https://x/v.mp4", "duration": 10**30,
                                    "is_available": True})
    assert r.status_code == 400
    assert _counts(app) == before


def test_nul_refused_and_unicode_round_trips(app, client, world):
    before = _counts(app)
    for path, field, extra in WRITES:
        r = client.post(path, headers=_headers(path),
                        json=_write_body(world, path, field, extra, "a\x00b"))
        assert r.status_code == 400 and r.json["code"] == "nul_character", path
    r = client.get("/community/feed?tags=a%00b")
    assert r.status_code == 400
    r = client.put("/api/user/preferences/", headers=bearer(OWNER),
                   json={"preferred_post_types": ["a\x00"]})
    assert r.status_code == 400
    assert _counts(app) == before

    title = "Zoë 🚀 مرحبا ̀ e\u0301 \u202e\uffff 𝕏"
    r = client.post("/community/posts", headers=bearer(OWNER), json={"title": title})
    assert r.status_code == 201 and r.json["title"] == title
    item = client.post("/api/v1/messaging/feed/", headers=bearer(OWNER), json={
        "group": world["group"], "title": title, "content_type": "text"})
    assert item.status_code == 201
    listed = client.get(f"/api/v1/messaging/feed/?group={world['group']}",
                        headers=bearer(OWNER)).json
    assert title in [i["title"] for i in listed]
    # Lone surrogates cannot be encoded as UTF-8: a clear 400, not a 500.
    r = client.post("/community/posts", headers=bearer(OWNER),
                    data=b'{"title": "\\ud800"}', content_type="application/json")
    assert r.status_code in (201, 400), r.status_code


def test_fan_out_queue_has_a_depth_cap(settings):
    """A burst of fan-outs is refused with 503 + Retry-After once the activity queue holds
    ACTIVITY_QUEUE_MAX_DEPTH jobs (no worker runs here, so nothing drains)."""
    app = create_app({"SETTINGS": settings.replace(activity_queue_max_depth=3), "TESTING": True})
    client = app.test_client()
    body = {"user_ids": list(range(1, 2001)), "activity_type": "fast_reminder", "title": "r"}
    codes = [client.post("/api/events/activity-feed/items/", headers=ADMIN, json=body)
             for _ in range(5)]
    assert [r.status_code for r in codes] == [202, 202, 202, 503, 503]
    refused = codes[3]
    assert refused.is_json and refused.json["code"] == "queue_full"
    assert refused.headers["Retry-After"] == "30"
    state = app.extensions["hc"]
    assert state.queue(state.settings.activity_queue).count == 3  # nothing half-queued
    state.close()


def test_seed_demo_refuses_a_database_with_data(app, client):
    assert client.post("/api/v1/groups/", headers=ADMIN, json={"name": "mine"}).status_code == 201
    before = fingerprint(app)
    runner = app.test_cli_runner()
    refused = runner.invoke(args=["seed-demo", "--users", "5", "--groups", "1", "--items", "5",
                                  "--posts", "5", "--reels", "2", "--views", "5"])
    assert refused.exit_code != 0
    assert "already has data" in refused.output and "--if-empty" in refused.output
    assert isinstance(refused.exception, SystemExit)  # a clean CLI error, no traceback
    skipped = runner.invoke(args=["seed-demo", "--if-empty"])
    assert skipped.exit_code == 0 and "skipped" in skipped.output
    assert fingerprint(app) == before


# --- the web server itself (the Procfile's web line, as it starts it) ------------------------


def _raw(base: str, data: bytes) -> tuple[int, dict[str, str], bytes]:
    import socket

    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(data)
        chunks = []
        with contextlib.suppress(ConnectionResetError):
            while chunk := conn.recv(65536):
                chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    lines = head.decode("latin1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, body


def _web_env(settings, tmp_path) -> dict[str, str]:
    return {"DATABASE_URL": settings.database_url, "REDIS_URL": settings.redis_url,
            "JWT_SECRET": JWT_SECRET, "CACHE_KEY_PREFIX": settings.key_prefix,
            "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prom"), "DATA_DIR": str(tmp_path),
            "LOG_LEVEL": "WARNING", "RATE_LIMIT_ANON": "0", "RATE_LIMIT_USER": "0"}


# What the app refuses itself (service/server_limits.py), whatever server runs it.
APP_LIMITS = {
    "long url": (b"GET /healthz?" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414,
                 "uri_too_long"),
    "big header": (b"GET /healthz HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                   + b"x" * 9000 + b"\r\n\r\n", 431, "header_fields_too_large"),
}
# What only a proxy in front can answer in JSON: granian refuses these before the app with
# an empty body (hyper has no hook for it).
SERVER_REFUSALS = {
    "bad framing": (b"GARBAGE\r\n\r\n", 400, "bad_request"),
    "bad content-length": (b"POST /community/posts HTTP/1.1\r\nHost: x\r\n"
                           b"Content-Length: abc\r\n\r\n", 400, "bad_request"),
    "huge url": (b"GET /healthz?" + b"a" * 70_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414,
                 "uri_too_long"),
    "huge head": (b"GET /healthz HTTP/1.1\r\nHost: x\r\n"
                  + b"".join(b"X-F%d: %s\r\n" % (i, b"y" * 4000) for i in range(20))
                  + b"\r\n", 431, "header_fields_too_large"),
}


def _assert_json_error(base: str, cases: dict) -> None:
    for name, (data, status, code) in cases.items():
        got, headers, body = _raw(base, data)
        assert got == status, (name, got, body[:200])
        assert headers["content-type"] == "application/json", (name, headers)
        parsed = json.loads(body)
        assert parsed["code"] == code and parsed["error"], (name, parsed)


def test_over_long_urls_and_header_fields_are_the_contract_json(settings, tmp_path):
    """A URL or a header field over 8 KiB (a token of that size, say) gets the JSON 414 /
    431 from the web process as the Procfile runs it."""
    with web(_web_env(settings, tmp_path), tmp_path / "web.log") as base:
        _assert_json_error(base, APP_LIMITS)
        assert _raw(base, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                    )[0] == 200


def test_the_shipped_proxy_answers_server_refusals_in_json(settings, tmp_path):
    """Bad framing and over-long heads through ops/nginx/hybrid-cache.conf in front of the
    Procfile's web: the contract's JSON error (granian alone answers them with an empty
    body); what passes the proxy still gets the app's JSON and its answers."""
    from tests.support.fault_servers import nginx_in_front

    with web(_web_env(settings, tmp_path), tmp_path / "web.log") as upstream, \
            nginx_in_front(upstream, tmp_path / "nginx") as base:
        _assert_json_error(base, SERVER_REFUSALS)
        _assert_json_error(base, APP_LIMITS)
        got, headers, body = _raw(base, b"GET /healthz HTTP/1.1\r\nHost: x\r\n"
                                        b"Connection: close\r\n\r\n")
        assert got == 200 and json.loads(body) == {"status": "ok"}
        r = requests.get(f"{base}/api/reels/recently-viewed", headers=bearer(OWNER), timeout=10)
        assert r.status_code == 200, r.text


def test_slow_and_silent_connections_do_not_stall_the_service(settings, tmp_path):
    """64 connections that sent half a request head and 64 that sent nothing: /healthz
    and a cached read still answer within 1 s (the contract's bound), on the web process
    started as the Procfile starts it (2 workers, as by default). Under gunicorn gthread
    16 such connections held every thread (/healthz timed out after 35 s)."""
    import socket

    env = {**_web_env(settings, tmp_path), "WEB_CONCURRENCY": "2"}
    read = "/api/reels/recently-viewed?page=1&per_page=10"
    with web(env, tmp_path / "web.log") as base:
        session = requests.Session()
        for _ in range(20):  # warm up: both workers, the user's keys in Redis
            assert requests.get(f"{base}/healthz", timeout=10).status_code == 200
            assert requests.get(base + read, headers=bearer(OWNER),
                                timeout=10).status_code == 200
        host, port = base.removeprefix("http://").split(":")
        hostile: list[socket.socket] = []
        try:
            for _ in range(64):
                conn = socket.create_connection((host, int(port)), timeout=10)
                conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                hostile.append(conn)
            for _ in range(64):
                hostile.append(socket.create_connection((host, int(port)), timeout=10))
            time.sleep(0.5)  # every connection open and its bytes sent
            timings = {}
            for name, path, headers in (("healthz", "/healthz", {}),
                                        ("cached read", read, bearer(OWNER))):
                started = time.perf_counter()
                r = session.get(base + path, headers={**headers, "Connection": "close"},
                                timeout=10)
                timings[name] = time.perf_counter() - started
                assert r.status_code == 200, (name, r.status_code, r.text[:200])
            print("\n[hostile] 64 slow-header + 64 silent connections: " + ", ".join(
                f"{k} {v * 1000:.0f} ms" for k, v in timings.items()))
            assert all(v < 1.0 for v in timings.values()), timings
        finally:
            for conn in hostile:
                conn.close()


def _seed_100k_posts(state) -> None:
    """100,000 posts by 500 authors, one a second back from now, tagged ``art``, of asset
    type ``image``; every 10,000th one also tagged ``rare`` and of type ``rare-asset``."""
    with state.db.session() as session:
        session.execute(text(
            "INSERT INTO posts (author_id, title, tags, asset_type, created_at) "
            "SELECT 1 + n % 500, 'p' || n, "
            "CASE WHEN n % 10000 = 0 THEN ARRAY['art', 'rare'] ELSE ARRAY['art'] END, "
            "CASE WHEN n % 10000 = 0 THEN 'rare-asset' ELSE 'image' END, "
            "now() - n * interval '1 second' FROM generate_series(1, 100000) AS n"))
        session.commit()


def _rows_read(plan: dict, table: str) -> int:
    """Rows the plan's scans of ``table`` returned (EXPLAIN ANALYZE, JSON), all loops."""
    own = (plan["Actual Rows"] * plan["Actual Loops"]
           if plan.get("Relation Name") == table else 0)
    return own + sum(_rows_read(child, table) for child in plan.get("Plans", ()))


def _work(client, path: str, headers: dict) -> tuple[dict, int, int, float]:
    """The page's body, SQL statements, Redis round trips and wall time (ms)."""
    import time

    from cache import stats
    from storage.db import DB_QUERIES

    def trips() -> float:
        return sum(s.value for m in stats.REDIS_CALLS.collect() for s in m.samples
                   if s.name.endswith("_total"))

    sql, redis = DB_QUERIES._value.get(), trips()
    started = time.perf_counter()
    r = client.get(path, headers=headers)
    ms = (time.perf_counter() - started) * 1000
    assert r.status_code == 200, r.get_data(as_text=True)
    return r.get_json(), int(DB_QUERIES._value.get() - sql), int(trips() - redis), ms


def test_a_filter_that_matches_nothing_is_answered_by_an_index(app, client):
    """100,000 posts and a filter no post matches (a tag, an asset type, or a tag among
    others): every feed answers an empty last page after one index probe (one SQL
    statement, then its result cached: one Redis round trip to read it and one to write
    it), and from the cached probe after that (no SQL, one round trip); no post read
    (the walk used to read the whole table
    looking for ``limit + 1`` matches: 765 ms at 50k posts, 11 s at 200k, in the probe
    that found it; then 300-700 ms a page under a scan budget)."""
    state = app.extensions["hc"]
    _seed_100k_posts(state)
    follower = bearer(9001)
    for author in range(1, 40):
        assert client.post(f"/community/users/{author}/follow",
                           headers=follower).status_code == 200
    times: dict[str, list[float]] = {}
    for filters in ("tags=no-such-tag", "asset_type=nope", "tags=art,no-such-tag",
                    "asset_type=image&tags=no-such-tag"):
        for feed, headers in (("recent", {}), ("trending", {}), ("recent", follower),
                              ("trending", follower), ("following", follower)):
            path = f"/community/feed?feed_type={feed}&{filters}"
            for warm in (False, True):  # cold (the filter's first page) or warm
                body, sql, redis, ms = _work(client, path, headers)
                assert body == {"posts": [], "total_count": 0, "has_more": False,
                                "next_cursor": None}, (path, body)
                assert (sql, redis) in ({(0, 1)} if warm else {(1, 2), (0, 1)}), (
                    path, sql, redis)
                times.setdefault(feed, []).append(ms)
    print("\n[hostile] filter matching nothing, 100k posts, median / slowest page (ms): "
          + ", ".join(f"{k} {sorted(v)[len(v) // 2]:.0f} / {max(v):.0f}"
                      for k, v in times.items()))


def test_filtered_walks_read_an_index_not_the_posts(app, client):
    """A filter ten posts of 100,000 match: the recent and following walks read them from
    an index (``ix_posts_live_asset_time``, the GIN ``ix_posts_tags``), all ten in one
    page with ``has_more`` false, in a fixed number of statements; the plans say so. A
    tag every post has walks the feed's order (full pages at once)."""
    from sqlalchemy import event

    state = app.extensions["hc"]
    _seed_100k_posts(state)
    with state.db.session() as session:
        session.execute(text("ANALYZE posts"))
        session.commit()
    follower = bearer(9002)
    with state.db.session() as session:  # every author: the following feed holds them all
        session.execute(text("INSERT INTO follows (follower_id, followee_id) "
                             "SELECT 9002, a FROM generate_series(1, 500) AS a"))
        session.commit()
    captured: list[tuple[str, object]] = []

    def capture(conn, cursor, statement, parameters, context, executemany):
        captured.append((statement, parameters))

    event.listen(state.db.engine, "before_cursor_execute", capture)
    try:
        for filters, index in (("tags=rare", "ix_posts_tags"),
                               ("asset_type=rare-asset", "ix_posts_live_asset_time")):
            for feed, headers in (("recent", {}), ("recent", follower),
                                  ("following", follower)):
                path = f"/community/feed?feed_type={feed}&{filters}"
                _, cold, _, _ = _work(client, path, headers)
                captured.clear()
                body, sql, _, ms = _work(client, path, headers)
                assert len(body["posts"]) == 10 and body["total_count"] == 10, body
                assert not body["has_more"] and body["next_cursor"] is None
                # Cold: + the count and the viewer's collectives and blocked authors
                # (filled once, with their versions). Warm: the keys (the probe is
                # cached, the posts are cached entities). Not a chunk per thousand posts,
                # whatever the table's size.
                assert cold <= 8 and sql == 1, (feed, filters, cold, sql)
                statement, params = next(c for c in captured if " AS us" in c[0])
                with state.db.engine.connect() as conn:
                    plan = "\n".join(r[0] for r in conn.exec_driver_sql(
                        "EXPLAIN " + statement, params))
                assert index in plan, plan
                print(f"\n[hostile] {feed} {filters} (10 of 100k posts): {ms:.0f} ms")
            # A deep cursor reads the index after it, not the posts before it.
            body, _, _, _ = _work(client, f"/community/feed?feed_type=recent&limit=3&{filters}",
                                  {})
            seen = [p["id"] for p in body["posts"]]
            while body["has_more"]:
                body, sql, _, _ = _work(client, f"/community/feed?feed_type=recent&limit=3&"
                                        f"{filters}&cursor={body['next_cursor']}", {})
                seen += [p["id"] for p in body["posts"]]
                assert sql <= 4, sql
            assert len(seen) == len(set(seen)) == 10
        # A tag every post has: the feed's own order under the scan budget, full pages.
        for feed, headers in (("recent", {}), ("following", follower)):
            path = f"/community/feed?feed_type={feed}&tags=art"
            _work(client, path, headers)  # fills the 500 author sets (a version each)
            body, sql, _, _ = _work(client, path, headers)
            assert len(body["posts"]) == 20 and body["has_more"], (feed, body)
            assert body["total_count"] == 100_000 and sql <= 8, (feed, sql)
        # A common tag a fifth of the posts have: a recent page reads the newest posts
        # until it has its page (about limit / a fifth of them), not every tagged post.
        with state.db.session() as session:
            session.execute(text("UPDATE posts SET tags = tags || ARRAY['fifth'] "
                                 "WHERE substr(title, 2)::int % 5 = 0"))
            session.execute(text("ANALYZE posts"))
            session.commit()
        path = "/community/feed?feed_type=recent&tags=fifth"
        _work(client, path, {})
        captured.clear()
        body, sql, _, _ = _work(client, path, {})
        assert len(body["posts"]) == 20 and body["has_more"] and sql == 1, (body, sql)
        statement, params = next(c for c in captured if " AS us" in c[0])
        with state.db.engine.connect() as conn:
            plan = conn.exec_driver_sql("EXPLAIN (ANALYZE, FORMAT JSON) " + statement,
                                        params).scalar_one()[0]["Plan"]
        assert _rows_read(plan, "posts") <= 500, json.dumps(plan, indent=1)
        # A common tag only the 2,000 oldest posts have: each recent page examines the
        # newest SCAN_BUDGET posts after its cursor (one statement), then says go on.
        with state.db.session() as session:
            session.execute(text("UPDATE posts SET tags = tags || ARRAY['old'] "
                                 "WHERE substr(title, 2)::int > 98000"))
            session.commit()
        path, seen, pages, cursor = "/community/feed?feed_type=recent&limit=50&tags=old", \
            [], 0, None
        while True:
            body, sql, _, _ = _work(client, path + (f"&cursor={cursor}" if cursor else ""),
                                    {})
            assert sql <= 6, (pages, sql)
            seen += [p["id"] for p in body["posts"]]
            pages += 1
            if not body["has_more"]:
                break
            cursor = body["next_cursor"]
        assert len(seen) == len(set(seen)) == 2000 and pages > 40, (len(seen), pages)
    finally:
        event.remove(state.db.engine, "before_cursor_execute", capture)


def test_a_repeated_mark_all_costs_no_database_work(app, client, admin_headers):
    """A mark-all with nothing left unread is answered from the cached read state: no SQL
    statement, however big the group (it cost 200 ms on a 200k-item group every time)."""
    from sqlalchemy import event

    from tests.support.group_feed import make_group, mark_all, post_item, unread

    state = app.extensions["hc"]
    member = bearer(31)
    group = make_group(client, admin_headers, members=[31])
    for n in range(5):
        post_item(client, bearer(1, admin=True), group, title=f"t{n}")
    assert unread(client, member, group) == 5
    assert mark_all(client, member, group).get_json()["count"] == 5
    statements: list[str] = []

    def capture(conn, cursor, statement, parameters, context, executemany):
        statements.append(statement)

    event.listen(state.db.engine, "before_cursor_execute", capture)
    try:
        again = mark_all(client, member, group).get_json()
    finally:
        event.remove(state.db.engine, "before_cursor_execute", capture)
    assert again["count"] == 0
    assert statements == []
    assert unread(client, member, group) == 0
    post_item(client, bearer(1, admin=True), group)  # something new: the statement runs again
    assert mark_all(client, member, group).get_json()["count"] == 1
