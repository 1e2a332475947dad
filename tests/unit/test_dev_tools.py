"""Developer tools' pure pieces: scripts/bench's route templates, counters and profile
summary; scripts/embedded.py's URL conversion and its "nothing to start" answer."""

from __future__ import annotations

import sys
from pathlib import Path

import embedded  # scripts/embedded.py (see tests/conftest.py)

from service.settings import Settings
from tests.support import ROOT

sys.path.insert(0, str(ROOT / "scripts"))

from benchlib import profile, scrape  # noqa: E402
from benchlib.endpoints import normalise  # noqa: E402


def test_route_templates_compare_without_parameter_names_or_trailing_slash():
    assert normalise("/api/v1/messaging/feed/{item_id}/mark-viewed/") == normalise(
        "/api/v1/messaging/feed/{id}/mark-viewed")
    assert normalise("/") == "/"


def test_run_counters_are_per_request_deltas():
    def sample(name, **labels):
        return (name, tuple(sorted(labels.items())))

    before = {
        sample("http_requests_total", endpoint="x.y", method="GET", status="200"): 10,
        sample("cache_events_total", path="p", outcome="hit"): 5,
        sample("db_queries_total"): 100,
    }
    after = {
        sample("http_requests_total", endpoint="x.y", method="GET", status="200"): 30,
        sample("http_requests_total", endpoint="metrics.metrics", method="GET",
               status="200"): 7,
        sample("cache_events_total", path="p", outcome="hit"): 20,
        sample("cache_events_total", path="p", outcome="miss"): 5,
        sample("redis_round_trips_total", path="p"): 40,
        sample("db_queries_total"): 110,
    }
    out = scrape.run_counters(before, after)
    assert out["served"] == 20  # scrapes of /metrics do not count
    assert out["hit_rate"] == 15 / 20
    assert out["redis_round_trips_per_request"] == 2
    assert out["sql_queries_per_request"] == 0.5


def test_profile_summary_names_layers_and_functions(tmp_path):
    raw = tmp_path / "p.txt"
    raw.write_text(
        "process 1:\"gunicorn\";run (gunicorn/workers/gthread.py:10);"
        "page (/work/main/service/x.py:3);execute (site-packages/sqlalchemy/engine/base.py:9);"
        "recv (socket.py:1) 3\n"
        "process 1:\"gunicorn\";run (gunicorn/workers/gthread.py:10);"
        "dumps (site-packages/flask/json/provider.py:5) 1\n"
    )
    out = profile.summarise(raw)
    assert out["samples"] == 4
    assert dict(out["by_layer"]) == {"sqlalchemy": 0.75, "flask": 0.25}
    assert out["self"][0] == ("recv (socket.py)", 0.75)
    assert "| sqlalchemy | 75.0% |" in profile.markdown({"endpoint": "e", "status": "ok", **out})


def test_nothing_started_when_both_urls_are_set(tmp_path: Path) -> None:
    given = Settings(
        database_url="postgresql+psycopg://postgres@127.0.0.1:5432/postgres",
        redis_url="redis://127.0.0.1:6379/0",
        data_dir=str(tmp_path / "data"),
    )
    started: list[str] = []
    assert embedded.ensure_servers(given, started=started) is given
    assert started == []
    assert not (tmp_path / "data" / "postgres").exists()


def test_sqlalchemy_url_conversion() -> None:
    assert (
        embedded._sqlalchemy_url("postgresql://postgres:@/postgres?host=/tmp/a b/pg")
        == "postgresql+psycopg://postgres@/postgres?host=/tmp/a%20b/pg"
    )
    assert (
        embedded._sqlalchemy_url("postgresql://postgres:@127.0.0.1:5433/postgres")
        == "postgresql+psycopg://postgres@127.0.0.1:5433/postgres"
    )
