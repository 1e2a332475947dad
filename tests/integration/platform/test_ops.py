"""Readiness with a dependency down, metrics, CLI commands."""

from __future__ import annotations

import re

import pytest
from click.testing import CliRunner
from sqlalchemy import text

from service import create_app
from service.cli import token as token_command
from tests.support.auth import JWT_SECRET
from tests.support.servers import RedisProcess


@pytest.fixture
def own_redis(tmp_path):
    server = RedisProcess(tmp_path).start()
    yield server
    server.stop()


def test_readyz_names_redis_when_it_stops(settings, own_redis):
    app = create_app({"SETTINGS": settings.replace(redis_url=own_redis.url), "TESTING": True})
    client = app.test_client()
    assert client.get("/readyz").status_code == 200
    own_redis.stop()
    r = client.get("/readyz")
    assert r.status_code == 503
    body = r.get_json()
    assert body["details"]["redis"] == "down"
    assert body["details"]["postgres"] == "ok"
    assert "redis" in body["error"]
    assert r.headers["Retry-After"]
    app.extensions["hc"].close()


def test_readyz_names_postgres_when_it_is_unreachable(settings):
    bad = settings.replace(database_url="postgresql+psycopg://postgres@127.0.0.1:1/x")
    app = create_app({"SETTINGS": bad, "TESTING": True})
    r = app.test_client().get("/readyz")
    assert r.status_code == 503
    assert r.get_json()["details"] == {"postgres": "down", "redis": "ok"}
    app.extensions["hc"].close()


def test_db_down_write_is_503_with_retry_after(settings, admin_headers):
    bad = settings.replace(database_url="postgresql+psycopg://postgres@127.0.0.1:1/x")
    app = create_app({"SETTINGS": bad, "TESTING": True})
    r = app.test_client().post("/api/v1/groups/", json={"name": "g"}, headers=admin_headers)
    assert r.status_code == 503
    assert r.headers["Retry-After"]
    assert r.get_json()["code"] == "database_unavailable"
    app.extensions["hc"].close()


def test_metrics_exposes_requests_and_cache_counters(client):
    client.get("/healthz")
    body = client.get("/metrics").get_data(as_text=True)
    assert re.search(r'http_requests_total\{endpoint="ops.healthz",method="GET",status="200"\}',
                     body)
    assert "http_request_duration_seconds_bucket" in body
    assert "rq_queue_depth" in body
    assert "cache_events_total" in body or "# HELP cache_events_total" in body


def test_cli_token_is_valid(client):
    result = CliRunner().invoke(token_command, ["--user", "42", "--admin"],
                                env={"JWT_SECRET": JWT_SECRET})
    assert result.exit_code == 0, result.output
    token = result.output.strip()
    r = client.post("/api/v1/groups/", json={"name": "g"},
                    headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 201


def test_seed_demo_loads_every_section(app, state):
    runner = app.test_cli_runner()
    result = runner.invoke(args=["seed-demo", "--users", "30", "--groups", "3", "--items", "200",
                                 "--posts", "100", "--reels", "20", "--views", "300"])
    assert result.exit_code == 0, result.output
    with state.db.session() as s:
        for table in ("users", "groups", "group_members", "feed_items", "feed_item_views",
                      "activities", "posts", "post_likes", "follows", "reels", "reel_views"):
            assert s.execute(text(f"SELECT count(*) FROM {table}")).scalar_one() > 0, table
        # positions are dense per group and match the group's counter
        bad = s.execute(text(
            "SELECT g.id FROM groups g JOIN feed_items f ON f.group_id = g.id "
            "GROUP BY g.id, g.last_position HAVING max(f.position) <> g.last_position "
            "OR count(*) <> g.last_position")).all()
        assert bad == []
        # like counters equal the like rows
        assert s.execute(text(
            "SELECT count(*) FROM posts p WHERE like_count <> "
            "(SELECT count(*) FROM post_likes l WHERE l.post_id = p.id)")).scalar_one() == 0
    again = runner.invoke(args=["seed-demo", "--if-empty"])
    assert "skipped" in again.output
