"""Reels (API section 5) over HTTP: shapes, every error case, fields, pagination, likes,
and the legacy reel tracker client driven exactly as a browser runs it."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime

import pytest
from sqlalchemy import text

from cache import recent_reels
from tests.support.recent_reels import (  # noqa: F401
    BASE_MS,
    FakeClock,
    bulk_reels,
    iso,
    make_reels,
    pg_rows,
    recent,
    views_count,
)


@pytest.fixture
def reels(client, admin_headers) -> list[int]:
    return make_reels(client, admin_headers, 5)


# --- POST /api/reels/<id>/view ----------------------------------------------------------------


def test_view_then_recently_viewed_shape(client, auth, reels, clock):
    h = auth(7)
    r = client.post(f"/api/reels/{reels[0]}/view", json={"view_duration": 12}, headers=h)
    assert r.status_code == 200
    assert r.get_json() == {"status": "success", "message": "View tracked successfully"}
    r = client.get("/api/reels/recently-viewed", headers=h)
    assert r.get_json() == {
        "status": "success",
        "data": {
            "reels": [{
                "reel_id": reels[0], "video_url": "https://cdn/r0.mp4",
                "description": "reel 0", "viewed_at": "2025-06-15T15:06:40Z",
                "view_duration": 12, "likes_count": 0, "views_count": 1, "is_liked": False,
            }],
            "pagination": {"total": 1, "pages": 1, "current_page": 1, "per_page": 20,
                           "has_next": False, "has_prev": False},
        },
    }


def test_rewatch_moves_to_top_and_updates_row(client, auth, reels, clock, state):
    h = auth(7)
    for reel, duration in ((reels[0], 5), (reels[1], 6), (reels[0], 9)):
        clock.tick(1000)
        assert client.post(f"/api/reels/{reel}/view", json={"view_duration": duration},
                           headers=h).status_code == 200
    listed = recent(client, h)["reels"]
    assert [(x["reel_id"], x["view_duration"]) for x in listed] == [(reels[0], 9), (reels[1], 6)]
    assert listed[0]["viewed_at"] == iso(clock.now)
    assert pg_rows(state, 7) == [(reels[0], clock.now, 9), (reels[1], clock.now - 1000, 6)]
    assert views_count(state, reels[0]) == 2  # every tracked view counts


def test_view_duration_capped_at_reel_duration(client, auth, reels, state):
    client.post(f"/api/reels/{reels[0]}/view", json={"view_duration": 95}, headers=auth(7))
    assert pg_rows(state, 7)[0][2] == 30


def test_view_duration_optional_null_on_a_first_view(client, auth, reels, state):
    for user, body in enumerate([None, {}, {"view_duration": None}, {"view_duration": 0}]):
        kwargs = {} if body is None else {"json": body}
        r = client.post(f"/api/reels/{reels[0]}/view", headers=auth(user + 1), **kwargs)
        assert r.status_code == 200, body
        want = 0 if body == {"view_duration": 0} else None
        assert pg_rows(state, user + 1)[0][2] == want
        [listed] = recent(client, auth(user + 1))["reels"]
        assert listed["view_duration"] == want


def test_view_without_duration_keeps_the_last_known(client, auth, reels, state, clock):
    """Single and batch views, read warm from Redis, from Postgres, and after a flush."""
    h = auth(7)
    single = f"/api/reels/{reels[0]}/view"

    def shown() -> list[tuple[int, int | None]]:
        return [(x["reel_id"], x["view_duration"]) for x in recent(client, h)["reels"]]

    assert client.post(single, json={"view_duration": 12}, headers=h).status_code == 200
    assert shown() == [(reels[0], 12)]  # the list is cached from here on
    for body in (None, {}, {"view_duration": None}):
        clock.tick(1000)
        kwargs = {} if body is None else {"json": body}
        assert client.post(single, headers=h, **kwargs).status_code == 200
        assert shown() == [(reels[0], 12)], body
        assert pg_rows(state, 7) == [(reels[0], clock.now, 12)]
    clock.tick(1000)
    r = client.post("/api/reels/views", json={"views": [{"reel_id": reels[0]}]}, headers=h)
    assert r.get_json()["tracked"] == 1
    assert shown() == [(reels[0], 12)] and pg_rows(state, 7)[0][1:] == (clock.now, 12)
    # A duration still replaces it, 0 included.
    assert client.post(single, json={"view_duration": 0}, headers=h).status_code == 200
    assert shown() == [(reels[0], 0)]
    # In one batch: the newest view has none, so the newest one with a duration counts.
    clock.tick(1000)
    views = [{"reel_id": reels[1], "viewed_at": iso(clock.now - 300), "view_duration": 4},
             {"reel_id": reels[1], "viewed_at": iso(clock.now - 200), "view_duration": 5},
             {"reel_id": reels[1], "viewed_at": iso(clock.now - 100)},
             {"reel_id": reels[2]}]
    assert client.post("/api/reels/views", json={"views": views}, headers=h).get_json()[
        "tracked"] == 4
    assert shown() == [(reels[2], None), (reels[1], 5), (reels[0], 0)]
    # ...but not a duration older than the stored view (it arrived late): it is kept.
    clock.tick(1000)
    late = [{"reel_id": reels[0], "viewed_at": iso(clock.now - 5000), "view_duration": 9},
            {"reel_id": reels[0]}]
    client.post("/api/reels/views", json={"views": late}, headers=h)
    assert shown()[0] == (reels[0], 0)
    assert [(row[0], row[2]) for row in pg_rows(state, 7)] == shown()
    state.cache.redis.delete(recent_reels.key(state.cache.keys, 7))  # rebuilt from Postgres
    assert shown() == [(reels[0], 0), (reels[2], None), (reels[1], 5)]


def test_bad_view_duration_400(client, auth, reels, state):
    for bad in (-1, 1.5, "10", True, [], {}, 86_401, 10**30):
        r = client.post(f"/api/reels/{reels[0]}/view", data=json.dumps({"view_duration": bad}),
                        headers={**auth(7), "Content-Type": "application/json"})
        assert r.status_code == 400, bad
        assert r.get_json()["details"]["view_duration"] == [
            "must be an integer from 0 to 86400 (seconds)"]
    assert pg_rows(state, 7) == [] and views_count(state, reels[0]) == 0


def test_view_body_errors_400(client, auth, reels):
    h = auth(7)
    url = f"/api/reels/{reels[0]}/view"
    r = client.post(url, data="{nope", headers={**h, "Content-Type": "application/json"})
    assert r.status_code == 400 and r.get_json()["code"] == "invalid_json"
    assert client.post(url, json=[1], headers=h).status_code == 400
    r = client.post(url, json={"view_duraton": 3}, headers=h)  # a typo is not ignored
    assert r.status_code == 400 and "view_duraton" in r.get_json()["details"]


def test_view_unknown_reel_404(client, auth, reels):
    for path in ("/api/reels/999999/view", f"/api/reels/{2**63 - 1}/view"):
        r = client.post(path, json={"view_duration": 1}, headers=auth(7))
        assert r.status_code == 404
        assert r.get_json()["error"] == "Reel not found"
    assert client.post(f"/api/reels/{2**63}/view", headers=auth(7)).status_code == 404


def test_view_unavailable_reel_400(client, auth, admin_headers, state):
    [hidden] = make_reels(client, admin_headers, 1, available=False)
    r = client.post(f"/api/reels/{hidden}/view", json={"view_duration": 3}, headers=auth(7))
    assert r.status_code == 400
    assert r.get_json()["error"] == "Reel is not available"
    assert pg_rows(state, 7) == [] and views_count(state, hidden) == 0


def test_no_token_401(client, reels):
    for method, path in (
        ("POST", f"/api/reels/{reels[0]}/view"), ("POST", "/api/reels/views"),
        ("GET", "/api/reels/recently-viewed"), ("POST", f"/api/reels/{reels[0]}/like"),
        ("DELETE", f"/api/reels/{reels[0]}/like"),
    ):
        r = client.open(path, method=method, json={"view_duration": 1})
        assert r.status_code == 401, path
        assert r.get_json()["error"] == "Authentication required"
        r = client.open(path, method=method, json={},
                        headers={"Authorization": "Bearer not.a.jwt"})
        assert r.status_code == 401, path


# --- POST /api/reels/views --------------------------------------------------------------------


def test_batch_tracks_good_rejects_bad_in_order(client, auth, admin_headers, reels, clock, state):
    [hidden] = make_reels(client, admin_headers, 1, available=False)
    h = auth(7)
    views = [
        {"reel_id": reels[0], "view_duration": 4},
        {"reel_id": 999999},
        {"reel_id": hidden},
        {"reel_id": reels[1], "view_duration": -2},
        {"reel_id": "abc"},
        {"reel_id": 0},
        {"reel_id": True},
        {"view_duration": 3},
        7,
        {"reel_id": reels[2], "viewed_at": "yesterday"},
        {"reel_id": reels[2], "viewed_at": iso(clock.now + 3_600_000)},
        {"reel_id": reels[2], "viewed_at": "1999-12-31T23:59:59Z"},
        {"reel_id": reels[3], "viewed_at": iso(clock.now - 60_000), "view_duration": 8},
        {"reel_id": reels[4], "extra": 1},
    ]
    r = client.post("/api/reels/views", json={"views": views}, headers=h)
    assert r.status_code == 200
    body = r.get_json()
    assert body["status"] == "success" and body["tracked"] == 2
    rejected = body["rejected"]
    assert [x["reel_id"] for x in rejected] == [
        999999, hidden, reels[1], "abc", 0, None, None, None, reels[2], reels[2], reels[2],
        reels[4]]
    errors = [x["error"] for x in rejected]
    assert errors[0] == "Reel not found" and errors[1] == "Reel is not available"
    assert errors[2] == "view_duration: must be an integer from 0 to 86400 (seconds)"
    assert errors[5].startswith("reel_id:") and errors[7] == "each view must be a JSON object"
    assert "future" in errors[9] and "2000" in errors[10] and "extra" in errors[11]
    assert pg_rows(state, 7) == [(reels[0], clock.now, 4), (reels[3], clock.now - 60_000, 8)]


def test_batch_hostile_items_are_rejected_not_500(client, auth, reels, state):
    views = [{"reel_id": 10**30}, {"reel_id": -(10**30)}, {"reel_id": "x" * 2000},
             {"reel_id": 1e308}, {"reel_id": reels[0], "view_duration": 10**30},
             {"reel_id": reels[0], "view_duration": 1e308},
             {"reel_id": reels[0], "viewed_at": "0001-01-01T00:00:00+14:00"},
             {"reel_id": reels[0], "viewed_at": "9999-12-31T23:59:59-14:00"},
             {"reel_id": reels[0], "viewed_at": 1750000000}, {"reel_id": [reels[0]]}]
    r = client.post("/api/reels/views", data=json.dumps({"views": views}),
                    headers={**auth(7), "Content-Type": "application/json"})
    assert r.status_code == 200
    body = r.get_json()
    assert body["tracked"] == 0 and len(body["rejected"]) == len(views)
    assert [x["reel_id"] for x in body["rejected"][:4]] == [None, None, None, None]
    assert pg_rows(state, 7) == []


def test_batch_older_view_never_overtakes(client, auth, reels, clock, state):
    h = auth(7)
    t = clock.now
    views = [{"reel_id": reels[0], "viewed_at": iso(t - 10), "view_duration": 10},
             {"reel_id": reels[0], "viewed_at": iso(t - 50), "view_duration": 50},
             {"reel_id": reels[1], "viewed_at": iso(t - 20), "view_duration": 20}]
    assert client.post("/api/reels/views", json={"views": views}, headers=h
                       ).get_json()["tracked"] == 3
    # A later request with an older view of reels[0] does not move it either.
    client.post("/api/reels/views", json={"views": [
        {"reel_id": reels[0], "viewed_at": iso(t - 30), "view_duration": 30}]}, headers=h)
    expected = [(reels[0], t - 10, 10), (reels[1], t - 20, 20)]
    assert pg_rows(state, 7) == expected
    listed = recent(client, h)["reels"]
    assert [(x["reel_id"], x["viewed_at"], x["view_duration"]) for x in listed] == [
        (reel, iso(ms), d) for reel, ms, d in expected]
    assert views_count(state, reels[0]) == 3


def test_batch_envelope_errors_400(client, auth, reels):
    h = auth(7)
    for body in ({}, {"views": "x"}, {"views": {"reel_id": 1}}, [],
                 {"views": [{"reel_id": reels[0]}] * 101}):
        r = client.post("/api/reels/views", json=body, headers=h)
        assert r.status_code == 400, body
        assert r.get_json()["code"] in {"validation_error", "bad_request"}


def test_batch_of_100_and_empty(client, auth, reels, state):
    h = auth(7)
    r = client.post("/api/reels/views", json={"views": []}, headers=h)
    assert r.get_json() == {"status": "success", "tracked": 0, "rejected": []}
    views = [{"reel_id": reels[i % 5], "view_duration": i} for i in range(100)]
    r = client.post("/api/reels/views", json={"views": views}, headers=h)
    assert r.get_json()["tracked"] == 100
    assert sum(views_count(state, reel) for reel in reels) == 100
    assert len(pg_rows(state, 7)) == 5


def test_equal_times_order_like_redis(client, auth, admin_headers, clock, state, settings):
    """Ties in viewed_at order by the id's text, as Redis does: '9' before '10'."""
    ids = make_reels(client, admin_headers, 10)
    assert ids[8:] == [9, 10]
    h = auth(7)
    t = clock.now
    client.post("/api/reels/views", json={"views": [
        {"reel_id": 9, "viewed_at": iso(t)}, {"reel_id": 10, "viewed_at": iso(t)},
        {"reel_id": 1, "viewed_at": iso(t - 1)}]}, headers=h)
    assert [x["reel_id"] for x in recent(client, h)["reels"]] == [9, 10, 1]
    state.cache.enabled = False
    assert [x["reel_id"] for x in recent(client, h)["reels"]] == [9, 10, 1]


# --- GET /api/reels/recently-viewed -----------------------------------------------------------


def test_pagination(client, auth, admin_headers, clock):
    ids = make_reels(client, admin_headers, 7)
    h = auth(7)
    for reel in ids:
        clock.tick()
        client.post(f"/api/reels/{reel}/view", headers=h)
    newest_first = ids[::-1]
    page = recent(client, h, page=2, per_page=3)
    assert [x["reel_id"] for x in page["reels"]] == newest_first[3:6]
    assert page["pagination"] == {"total": 7, "pages": 3, "current_page": 2, "per_page": 3,
                                  "has_next": True, "has_prev": True}
    last = recent(client, h, page=3, per_page=3)
    assert [x["reel_id"] for x in last["reels"]] == newest_first[6:]
    assert last["pagination"]["has_next"] is False
    beyond = recent(client, h, page=9, per_page=3)
    assert beyond["reels"] == [] and beyond["pagination"]["total"] == 7
    assert len(recent(client, h, per_page=100)["reels"]) == 7


def test_empty_list(client, auth):
    data = recent(client, auth(8))
    assert data == {"reels": [], "pagination": {"total": 0, "pages": 0, "current_page": 1,
                                                "per_page": 20, "has_next": False,
                                                "has_prev": False}}


def test_bad_query_400(client, auth):
    for params in ({"page": 0}, {"page": "x"}, {"per_page": 0}, {"per_page": 101},
                   {"per_page": "ten"}, {"fields": "reel_id,secret"}, {"fields": ""},
                   {"fields": " , "}):
        r = client.get("/api/reels/recently-viewed", query_string=params, headers=auth(7))
        assert r.status_code == 400, params
        assert list(r.get_json()["details"]) == list(params)


def test_fields_filter(client, auth, reels):
    h = auth(7)
    client.post(f"/api/reels/{reels[0]}/view", json={"view_duration": 3}, headers=h)
    [only] = recent(client, h, fields="view_duration,reel_id")["reels"]
    assert only == {"reel_id": reels[0], "view_duration": 3}
    [only] = recent(client, h, fields="viewed_at")["reels"]
    assert list(only) == ["viewed_at"]
    r = client.get("/api/reels/recently-viewed?fields=secret", headers=h)
    assert "secret" in r.get_json()["details"]["fields"][0]


def test_fields_without_shared_ones_skip_the_reel_entities(client, auth, reels, monkeypatch):
    h = auth(7)
    client.post(f"/api/reels/{reels[0]}/view", headers=h)
    calls = []
    import storage.recent_reels as storage

    original = storage.reel_entities
    monkeypatch.setattr(storage, "reel_entities",
                        lambda *a: calls.append(a) or original(*a))
    recent(client, h, fields="reel_id,viewed_at,is_liked,view_duration")
    assert calls == []
    recent(client, h, fields="reel_id,likes_count")
    assert len(calls) == 1  # the entity's fill; cached after
    recent(client, h, fields="video_url")
    assert len(calls) == 1


def test_lists_are_per_user(client, auth, reels):
    client.post(f"/api/reels/{reels[0]}/view", headers=auth(7))
    client.post(f"/api/reels/{reels[1]}/view", headers=auth(8))
    assert [x["reel_id"] for x in recent(client, auth(7))["reels"]] == [reels[0]]
    assert [x["reel_id"] for x in recent(client, auth(8))["reels"]] == [reels[1]]


def test_only_newest_n_kept(client, auth, clock, state, settings):
    n = settings.max_recent_reel_views
    ids = bulk_reels(state, n + 5)
    h = auth(7)
    for reel in ids:
        clock.tick()
        client.post(f"/api/reels/{reel}/view", headers=h)
    data = recent(client, h, per_page=100)
    assert [x["reel_id"] for x in data["reels"]] == ids[::-1][:n]
    assert data["pagination"]["total"] == n
    assert [row[0] for row in pg_rows(state, 7)] == ids[::-1][:n]


# --- likes ------------------------------------------------------------------------------------


def test_like_unlike_answer_whether_this_call_changed_anything(client, auth, reels, state):
    h = auth(7)
    url = f"/api/reels/{reels[0]}/like"
    answers = [client.post(url, headers=h) for _ in range(2)]
    assert [(r.status_code, r.get_json()) for r in answers] == [
        (200, {"liked": True}), (200, {"liked": False})]
    client.post(f"/api/reels/{reels[0]}/view", headers=h)
    [item] = recent(client, h)["reels"]
    assert item["is_liked"] is True and item["likes_count"] == 1
    answers = [client.delete(url, headers=h) for _ in range(2)]
    assert [(r.status_code, r.get_json()) for r in answers] == [
        (200, {"unliked": True}), (200, {"unliked": False})]
    [item] = recent(client, h)["reels"]
    assert item["is_liked"] is False and item["likes_count"] == 0
    # Unliking a reel never liked changes nothing.
    assert client.delete(f"/api/reels/{reels[1]}/like", headers=h).get_json() == {
        "unliked": False}


def test_like_errors(client, auth, admin_headers):
    [hidden] = make_reels(client, admin_headers, 1, available=False)
    for method in ("POST", "DELETE"):
        r = client.open("/api/reels/999999/like", method=method, headers=auth(7))
        assert r.status_code == 404 and r.get_json()["error"] == "Reel not found"
    r = client.post(f"/api/reels/{hidden}/like", headers=auth(7))
    assert r.status_code == 400 and r.get_json()["error"] == "Reel is not available"
    # Taking a like back is always allowed.
    assert client.delete(f"/api/reels/{hidden}/like", headers=auth(7)).status_code == 200


def test_likes_count_exact_under_concurrency(app, auth, reels, state):
    """16 users like (each twice, concurrently), then 8 of them unlike (twice)."""
    url = f"/api/reels/{reels[0]}/like"

    def hammer(method: str, users: range) -> None:
        barrier = threading.Barrier(len(users) * 2)
        errors: list[int] = []

        def run(user: int) -> None:
            client = app.test_client()
            barrier.wait()
            r = client.open(url, method=method, headers=auth(user))
            if r.status_code != 200:
                errors.append(r.status_code)

        threads = [threading.Thread(target=run, args=(u,)) for u in users for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []

    hammer("POST", range(100, 116))
    with state.db.session() as s:
        count = s.execute(text("SELECT likes_count FROM reels WHERE id = :id"),
                          {"id": reels[0]}).scalar_one()
    assert count == 16
    hammer("DELETE", range(100, 108))
    with state.db.session() as s:
        count, rows = s.execute(text(
            "SELECT likes_count, (SELECT count(*) FROM reel_likes WHERE reel_id = :id) "
            "FROM reels WHERE id = :id"), {"id": reels[0]}).one()
    assert count == rows == 8


# --- the legacy reel tracker client -------------------------------------------------------------


def test_reel_tracker_client_unchanged(client, auth, admin_headers, clock, state):
    """Drive the endpoints the way the documented browser tracker does: one
    ``fetch(POST /api/reels/<id>/view)`` per reel as the user scrolls away from it, body
    ``JSON.stringify({view_duration})`` with ``Content-Type: application/json`` and the
    bearer token, then the recently-viewed screen."""
    reels = make_reels(client, admin_headers, 4, duration=20)
    token = auth(42)["Authorization"]
    browser_headers = {
        "Authorization": token,
        "Content-Type": "application/json",
        "Accept": "*/*",
        "Origin": "http://localhost",
        "User-Agent": "Mozilla/5.0 (X11; Linux x86_64) reel-tracker",
    }
    # Scroll: reel 0 (3 s), reel 1 (watched to the end, looping: 47 s), reel 2 (0 s,
    # skipped at once), reel 3 (12 s), then back up to reel 1 (5 s).
    for reel, seconds in ((0, 3), (1, 47), (2, 0), (3, 12), (1, 5)):
        clock.tick(4000)
        r = client.open(f"/api/reels/{reels[reel]}/view", method="POST",
                        data=json.dumps({"view_duration": seconds}), headers=browser_headers)
        assert r.status_code == 200
        assert r.headers["Content-Type"] == "application/json"
        assert r.get_json() == {"status": "success", "message": "View tracked successfully"}

    r = client.get("/api/reels/recently-viewed", headers={"Authorization": token,
                                                           "Accept": "application/json"})
    assert r.status_code == 200
    listed = r.get_json()["data"]["reels"]
    assert [(x["reel_id"], x["view_duration"]) for x in listed] == [
        (reels[1], 5), (reels[3], 12), (reels[2], 0), (reels[0], 3)]
    assert listed[0]["viewed_at"] == iso(clock.now)
    assert [x["views_count"] for x in listed] == [2, 1, 1, 1]
    assert len(pg_rows(state, 42)) == 4  # one row per (user, reel)
    assert datetime.fromisoformat(listed[-1]["viewed_at"]).tzinfo == UTC
