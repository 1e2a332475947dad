"""scripts/bench: a tiny ``--quick`` run produces complete output (not checked: the numbers,
this machine is noisy); the pieces that turn counters into figures: tests/unit/test_dev_tools.py.

The tiny run loads five endpoints, one of each way the bench builds requests (a cached
page, a deep cursor walk, a forced recompute, a write on items, a write on reels): each
endpoint costs the suite a few seconds, and ``make bench`` runs them all. It runs one web
worker: a second one only slows the two service starts on 2 cores, and the run checks the
output, not the figures. Every endpoint's route is checked against the OpenAPI
document below."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import text

from tests.support import ROOT

sys.path.insert(0, str(ROOT / "scripts"))

from benchlib.endpoints import CEILING, ENDPOINTS, routes_of  # noqa: E402

RUN_FIELDS = ("rps", "p50_ms", "p99_ms", "requests", "non_2xx", "hit_rate",
              "redis_round_trips_per_request", "sql_queries_per_request", "cpu_cores",
              "warm_jobs_dropped")


def test_every_benchmarked_route_is_in_the_openapi_document(client):
    routes = routes_of(client.get("/openapi.json").get_json())
    missing = [e.name for e in (*ENDPOINTS, CEILING) if not e.available(routes)]
    assert not missing, f"routes the benchmark loads are gone: {missing}"


def test_sql_statements_are_counted(state):
    def value() -> float:
        return REGISTRY.get_sample_value("db_queries_total") or 0.0

    before = value()
    with state.db.session() as session:
        session.execute(text("SELECT 1"))
        session.execute(text("SELECT 2"))
    assert value() - before == 2


@pytest.mark.skipif(not shutil.which("wrk") and not shutil.which("apt-get"),
                    reason="wrk is not installed and cannot be (no apt-get)")
def test_quick_run_output_is_complete(server_urls, tmp_path):
    chosen = {"group_feed", "trending_deep", "personalized_uncached", "mark_viewed",
              "reel_view"}
    assert chosen <= {e.name for e in ENDPOINTS}
    db_url, redis_url = server_urls
    out = tmp_path / "results.json"
    env = {**os.environ, "DATABASE_URL": db_url, "REDIS_URL": redis_url}
    env.pop("DATA_DIR", None)
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench"), "--quick", "--scale", "0.01",
         "--duration", "1", "--warmup", "0", "--active-users", "40", "--no-progress", "--web-only",
         "--web-concurrency", "1",
         "--only", ",".join(sorted(chosen)),
         "--key-prefix", f"bench-test-{uuid.uuid4().hex[:8]}:", "--data-dir",
         str(tmp_path / "bench"), "--out", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=170, check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    table = done.stdout
    assert "| endpoint | a req/s |" in table and "**ceiling**" in table
    assert "Redis, per active user" in table and "Postgres `feed_item_views`" in table
    result = json.loads(out.read_text())
    assert set(result["endpoints"]) == chosen
    for name, ep in result["endpoints"].items():
        for config in ("a", "b"):
            run = ep[config]
            assert run["status"] == "ok", (name, config, run)
            assert all(field in run for field in RUN_FIELDS), (name, config, run)
            assert ep["label"] in table
        assert ep["ratio_a_b"] is not None and ep["ratio_a_c"] is not None, name
    assert result["ceiling"]["c"]["status"] == "ok"
    assert len(result["ceiling"]["c"]["runs_rps"]) == 2 and "Ceiling measured before" in table
    # Every active user signed in before the first measured run; the warm jobs that
    # queued (no worker here) were dropped rather than left to compete with (a).
    assert "Warm jobs queued by the active users' first requests" in table
    memory = result["memory"]
    assert memory["redis"]["bytes_per_active_user_mean"] is not None
    assert memory["redis"]["tracked_views"]["reel_view"] is not None
    assert memory["redis"]["tracked_views"]["group_feed_item_view"] is not None
    assert memory["postgres"]["feed_item_views"]["bytes_per_row"] is not None
    for key in ("sizes", "rows", "dataset_fingerprint", "duration_s", "connections"):
        assert key in result["meta"]
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
