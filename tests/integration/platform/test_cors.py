"""CORS for browser clients (API.md, Conventions): listed origins only, never ``*``."""

from __future__ import annotations

import pytest

from service import create_app
from service.settings import Settings

APP_ORIGIN = "https://app.example.com"
LOCAL_ORIGIN = "http://localhost:3000"
IPV6_ORIGIN = "http://[::1]:5173"


@pytest.fixture
def cors_client(settings):
    origins = f" {APP_ORIGIN}, {LOCAL_ORIGIN},{IPV6_ORIGIN},"
    parsed = Settings.from_env({"CORS_ALLOWED_ORIGINS": origins}).cors_allowed_origins
    assert parsed == (APP_ORIGIN, LOCAL_ORIGIN, IPV6_ORIGIN)
    app = create_app({"SETTINGS": settings.replace(cors_allowed_origins=parsed),
                      "TESTING": True})
    yield app.test_client()
    app.extensions["hc"].close()


def preflight(client, path, origin, method="POST",
              headers="authorization, content-type"):
    return client.options(path, headers={
        "Origin": origin, "Access-Control-Request-Method": method,
        "Access-Control-Request-Headers": headers})


def _cors_headers(response) -> list[str]:
    return [k for k, _ in response.headers.items() if k.lower().startswith("access-control-")]


def _listed(value: str | None) -> set[str]:
    return {part.strip().lower() for part in (value or "").split(",") if part.strip()}


PREFLIGHTS = [
    ("/community/posts", "POST"),
    ("/community/posts/5/like", "DELETE"),
    ("/api/posts/5/heart/", "DELETE"),  # a MethodView route
    ("/api/user/preferences/", "PUT"),
    ("/api/reels/recently-viewed", "GET"),
]


@pytest.mark.parametrize("path,method", PREFLIGHTS)
def test_preflight_from_a_listed_origin(cors_client, path, method):
    for origin in (APP_ORIGIN, LOCAL_ORIGIN, IPV6_ORIGIN):
        r = preflight(cors_client, path, origin, method)
        assert r.status_code == 200
        assert r.headers.getlist("Access-Control-Allow-Origin") == [origin]
        assert _listed(r.headers.get("Access-Control-Allow-Methods")) >= {
            "get", "post", "put", "delete"}
        assert _listed(r.headers.get("Access-Control-Allow-Headers")) == {
            "authorization", "content-type"}
        assert "Access-Control-Allow-Credentials" not in r.headers
        assert "origin" in _listed(r.headers.get("Vary"))
        assert r.headers.get("Access-Control-Max-Age") == "600"


def test_other_origins_get_no_allow_header(cors_client):
    for origin in ("https://evil.example", "https://app.example.com.evil.example",
                   "https://app.example.co", "http://app.example.com", "null",
                   "https://app.example.com:8443"):
        r = preflight(cors_client, "/community/posts", origin)
        assert "Access-Control-Allow-Origin" not in r.headers, origin
        assert "Access-Control-Allow-Methods" not in r.headers, origin
        r = cors_client.get("/healthz", headers={"Origin": origin})
        assert r.status_code == 200 and "Access-Control-Allow-Origin" not in r.headers


def test_requests_from_a_listed_origin_and_errors_carry_it(cors_client, auth):
    h = {"Origin": APP_ORIGIN}
    cases = [
        cors_client.get("/healthz", headers=h),  # 200
        cors_client.post("/community/posts", json={"title": "x"}, headers=h),  # 401
        cors_client.post("/community/posts", json={}, headers={**h, **auth(3)}),  # 400
        cors_client.get("/community/posts/1/engagement", headers=h),  # 404
        cors_client.get("/community/feed", headers=h),  # 200 from the feed
    ]
    assert [r.status_code for r in cases] == [200, 401, 400, 404, 200]
    for r in cases:
        assert r.headers.getlist("Access-Control-Allow-Origin") == [APP_ORIGIN]
        assert "retry-after" in _listed(r.headers.get("Access-Control-Expose-Headers"))
        assert "Access-Control-Allow-Credentials" not in r.headers
    # No Origin (a server-side client): no CORS headers at all.
    r = cors_client.get("/healthz")
    assert _cors_headers(r) == []


def test_never_a_wildcard(cors_client):
    responses = [preflight(cors_client, p, o, m) for p, m in PREFLIGHTS
                 for o in (APP_ORIGIN, "https://evil.example")]
    responses += [cors_client.get("/healthz", headers={"Origin": o})
                  for o in (APP_ORIGIN, "*", "https://evil.example")]
    for r in responses:
        assert "*" not in r.headers.getlist("Access-Control-Allow-Origin")


def test_default_no_cors_headers(client):
    assert Settings.from_env({}).cors_allowed_origins == ()
    for r in (preflight(client, "/community/posts", APP_ORIGIN),
              client.get("/healthz", headers={"Origin": APP_ORIGIN})):
        assert _cors_headers(r) == []
