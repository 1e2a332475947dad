"""Personalized feed controls (seed 003, phases 4-6), through HTTP: ``preferred_artist_types``,
the admin's ``/api/admin/ranking/`` switch and weights (in force at every process's next
page, cached pages included), and the sampled ranking-decision log line."""

from __future__ import annotations

import json
import logging
from datetime import timedelta

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import text

from service import create_app, ranked_feed
from service.settings import DEFAULT_RANKING_WEIGHTS
from tests.support.ranked_feed_data import FROZEN_NOW

URL = "/api/admin/ranking/"
ONLY_RECENCY = {"recency": 1, "social": 0, "interaction": 0, "engagement": 0,
                "collective": 0, "post_type": 0}


def total(name: str) -> float:
    return sum(s.value for m in REGISTRY.collect() if m.name == name
               for s in m.samples if s.name == name + "_total")


def hits(path: str = "ranked_feed") -> float:
    return REGISTRY.get_sample_value("cache_events_total",
                                     {"path": path, "outcome": "hit"}) or 0.0


@pytest.fixture
def world(state, monkeypatch):
    """Viewer 9 is a fellow of user 2. Posts, oldest first: two by 2 (48 h and 36 h old),
    three by strangers 3..5 (3 h, 2 h, 1 h old)."""
    monkeypatch.setattr(ranked_feed, "now", lambda: FROZEN_NOW)
    rows = [(2, 48), (2, 36), (3, 3), (4, 2), (5, 1)]
    with state.db.session() as s:
        ids = [s.execute(text(
            "INSERT INTO posts (author_id, title, created_at) VALUES (:a, 't', :c) "
            "RETURNING id"), {"a": a, "c": FROZEN_NOW - timedelta(hours=h)}).scalar_one()
            for a, h in rows]
        s.execute(text("INSERT INTO fellows (user_id, fellow_id) VALUES (9, 2), (2, 9)"))
        s.commit()
    return {"ids": ids, "newest_first": ids[::-1], "fellows_first": [ids[1], ids[0],
                                                                     *ids[:1:-1]]}


def order(client, auth, viewer: int = 9, **params) -> tuple[list[int], list]:
    query = "&".join(f"{k}={v}" for k, v in params.items())
    r = client.get(f"/api/posts/?{query}", headers=auth(viewer))
    assert r.status_code == 200, r.get_json()
    results = r.get_json()["results"]
    return [p["id"] for p in results], [p["score"] for p in results]


def put(client, admin_headers, body):
    r = client.put(URL, json=body, headers=admin_headers)
    assert r.status_code == 200, r.get_json()
    return r.get_json()


# --- preferences -------------------------------------------------------------------------


def test_preferred_artist_types_stored_and_bounded(client, auth):
    r = client.put("/api/user/preferences/", headers=auth(9),
                   json={"preferred_artist_types": ["painter", "poet", "painter"]})
    assert r.status_code == 200 and r.get_json()["preferred_artist_types"] == ["painter", "poet"]
    stored = client.get("/api/user/preferences/", headers=auth(9)).get_json()
    assert stored["preferred_artist_types"] == ["painter", "poet"]
    many = [f"t{i}" for i in range(101)]
    for bad, field in (({"preferred_artist_types": many}, "preferred_artist_types"),
                       ({"preferred_artist_types": [""]}, "preferred_artist_types"),
                       ({"preferred_artist_types": ["x" * 51]}, "preferred_artist_types"),
                       ({"preferred_artist_types": "poet"}, "preferred_artist_types"),
                       ({"preferred_post_types": many}, "preferred_post_types"),
                       ({"blocked_users": list(range(10, 111))}, "blocked_users"),
                       # a valid field beside a bad one: nothing is written
                       ({"preferred_post_types": ["post"], "preferred_artist_types": many},
                        "preferred_artist_types")):
        r = client.put("/api/user/preferences/", headers=auth(9), json=bad)
        assert r.status_code == 400 and field in r.get_json()["details"], field
    assert client.get("/api/user/preferences/", headers=auth(9)).get_json() == stored
    ok = client.put("/api/user/preferences/", headers=auth(9),
                    json={"preferred_artist_types": many[:100]})
    assert ok.status_code == 200 and len(ok.get_json()["preferred_artist_types"]) == 100


# --- the admin endpoint --------------------------------------------------------------------


def test_admin_only_and_defaults_from_configuration(client, auth, admin_headers, state,
                                                    monkeypatch):
    assert client.get(URL).status_code == 401
    assert client.get(URL, headers=auth(9)).status_code == 403
    assert client.put(URL, json={"enabled": False}, headers=auth(9)).status_code == 403
    assert client.get(URL, headers=admin_headers).get_json() == {
        "enabled": True, "weights": DEFAULT_RANKING_WEIGHTS}
    configured = {**DEFAULT_RANKING_WEIGHTS, "social": 0.5}
    monkeypatch.setattr(state, "settings", state.settings.replace(ranking_weights=configured))
    assert client.get(URL, headers=admin_headers).get_json()["weights"] == configured
    # An admin's weight overrides the configuration; the others keep following it.
    assert put(client, admin_headers, {"weights": {"recency": 2}})["weights"] == {
        **configured, "recency": 2.0}
    assert put(client, admin_headers, {"enabled": False}) == {
        "enabled": False, "weights": {**configured, "recency": 2.0}}
    assert put(client, admin_headers, {"weights": {"post_type": 0, "social": 1}}) == {
        "enabled": False, "weights": {**configured, "recency": 2.0, "post_type": 0.0,
                                      "social": 1.0}}
    assert put(client, admin_headers, {}) == client.get(URL, headers=admin_headers).get_json()


@pytest.mark.parametrize("body,field", [
    ({"enabled": "maybe"}, "enabled"),
    ({"enabled": None}, "enabled"),
    ({"weights": {"recency": -0.1}}, "weights"),
    ({"weights": {"recency": "high"}}, "weights"),
    ({"weights": {"recency": 1e300}}, "weights"),
    ({"weights": {"freshness": 1}}, "weights"),
    ({"weights": [1, 2]}, "weights"),
    ({"weights": None}, "weights"),
    ({"enabled": False, "weights": {"social": -1}}, "weights"),  # nothing half-written
    ({"colour": "red"}, "colour"),
])
def test_bad_input_is_400_naming_the_field_and_changes_nothing(client, admin_headers, state,
                                                               body, field):
    before = client.get(URL, headers=admin_headers).get_json()
    r = client.put(URL, json=body, headers=admin_headers)
    assert r.status_code == 400 and r.get_json()["code"] == "validation_error"
    assert field in r.get_json()["details"]
    assert client.get(URL, headers=admin_headers).get_json() == before
    with state.db.session() as s:
        assert s.execute(text("SELECT count(*) FROM ranking_config")).scalar_one() == 0


# --- in force at the next page -------------------------------------------------------------


def test_disabled_gives_chronological_even_to_a_cached_viewer(client, auth, admin_headers,
                                                              world):
    personalized, _ = order(client, auth)
    assert personalized != world["newest_first"]  # the fellow's posts rank higher
    cached = hits()
    assert order(client, auth)[0] == personalized and hits() == cached + 1  # cached
    put(client, admin_headers, {"enabled": False})
    ids, scores = order(client, auth)
    assert ids == world["newest_first"] and scores == [None] * 5
    assert order(client, auth, ordering="personalized")[0] == world["newest_first"]
    put(client, admin_headers, {"enabled": True})
    assert order(client, auth)[0] == personalized


def test_weights_change_reorders_a_cached_viewer(client, auth, admin_headers, world):
    put(client, admin_headers, {"weights": ONLY_RECENCY})
    assert order(client, auth)[0] == world["newest_first"]
    cached = hits()
    assert order(client, auth)[0] == world["newest_first"] and hits() == cached + 1
    put(client, admin_headers, {"weights": {"recency": 0, "social": 1}})  # the rest stay 0
    ids, scores = order(client, auth, explain="true")
    assert ids[:2] == world["fellows_first"][:2] and scores[:2] == [50.0, 50.0]
    assert scores[2:] == [0.0, 0.0, 0.0]


def test_every_process_uses_the_new_controls_at_its_next_page(client, auth, admin_headers,
                                                              settings, world):
    other = create_app({"SETTINGS": settings, "TESTING": True})  # a second process
    try:
        other_client = other.test_client()
        personalized, _ = order(other_client, auth)  # caches controls and page there
        assert order(other_client, auth)[0] == personalized
        put(client, admin_headers, {"enabled": False})  # through this process
        assert order(other_client, auth)[0] == world["newest_first"]
        put(client, admin_headers, {"enabled": True, "weights": ONLY_RECENCY})
        assert order(other_client, auth, explain="true")[1][0] == pytest.approx(
            100 * 2.718281828459045 ** (-1 / 24))
    finally:
        other.extensions["hc"].close()


def test_lost_redis_copy_is_reloaded_from_postgres(client, auth, admin_headers, state, world):
    put(client, admin_headers, {"enabled": False})
    assert order(client, auth)[0] == world["newest_first"]
    redis = state.cache.redis
    keys = list(redis.scan_iter(match=f"{state.settings.key_prefix}*"))
    redis.delete(*keys)  # a flushed cache: the switch is still off, from Postgres
    assert order(client, auth)[0] == world["newest_first"]
    put(client, admin_headers, {"enabled": True})
    assert order(client, auth)[0] != world["newest_first"]


def test_warm_page_costs_no_statement_and_two_round_trips(client, auth, admin_headers,
                                                          world):
    put(client, admin_headers, {"weights": {"social": 0.3}})
    order(client, auth)  # fills the controls, the version copy, the page and its posts
    sql, trips = total("db_queries"), total("redis_round_trips")
    order(client, auth)
    # The versions, the controls and the ranking's page in one; the page's post entities.
    assert (total("db_queries") - sql, total("redis_round_trips") - trips) == (0, 2)


# --- the decision log ----------------------------------------------------------------------


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def decision_lines():
    """The messages logged on ``service.ranking`` (no caplog: the cluster run of these
    modules disables pytest's logging plugin)."""
    logger, handler = logging.getLogger("service.ranking"), Lines()
    logger.addHandler(handler)
    yield handler.lines
    logger.removeHandler(handler)


def test_sampled_decision_log_line(client, auth, state, world, monkeypatch, decision_lines):
    monkeypatch.setattr(state, "settings", state.settings.replace(ranking_log_sample=1.0))
    ids, scores = order(client, auth, page_size=3)
    [line] = decision_lines
    entry = json.loads(line)
    assert entry["event"] == "ranking_decision" and entry["viewer"] == 9
    assert entry["page"] == 1 and entry["count"] == 5
    assert [p["id"] for p in entry["top"]] == ids and [p["score"] for p in entry["top"]] \
        == scores
    assert set(entry["top"][0]["components"]) == set(DEFAULT_RANKING_WEIGHTS)
    assert entry["weights"] == DEFAULT_RANKING_WEIGHTS
    decision_lines.clear()
    monkeypatch.setattr(state, "settings", state.settings.replace(ranking_log_sample=0.0))
    for _ in range(5):
        order(client, auth)
    assert decision_lines == []
    monkeypatch.setattr(state, "settings", state.settings.replace(ranking_log_sample=1.0))
    order(client, auth, ordering="chronological")  # not a ranked page: no line
    assert decision_lines == []
