"""The operators' kit in ops/: Prometheus rules (promtool's checks and unit tests, then the
same rules on a real Prometheus scraping the service through a Redis outage) and the
Grafana dashboard (every query names a metric the service exports)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest
import requests
import yaml

from tests.support import ROOT as PROJECT_ROOT
from tests.support.auth import JWT_SECRET, bearer
from tests.support.fault_servers import FaultyRedis
from tests.support.servers import free_port, web

ROOT = PROJECT_ROOT
OPS = ROOT / "ops"
PROMETHEUS, PROMTOOL = shutil.which("prometheus"), shutil.which("promtool")
needs_prometheus = pytest.mark.skipif(
    not (PROMETHEUS and PROMTOOL),
    reason="Prometheus is not installed: `apt-get install prometheus` (Debian's package; "
           ".ci/run installs it where apt-get works)",
)


@needs_prometheus
def test_promtool_checks_and_unit_tests_pass():
    for args in (["check", "rules", "alerts.yml"], ["check", "config", "prometheus.yml"],
                 ["test", "rules", "alerts_test.yml"]):
        done = subprocess.run([PROMTOOL, *args], cwd=OPS / "prometheus", capture_output=True,
                              text=True, timeout=60, check=False)
        assert done.returncode == 0, (args, done.stdout[-3000:], done.stderr[-3000:])


def shortened(rules: str) -> str:
    """The same rules with every window and ``for`` in seconds, so that a test sees an alert
    fire and clear in moments: ``[5m]`` -> ``[10s]``, ``offset 15m`` -> ``offset 10s``,
    ``for: 5m`` -> ``for: 2s``."""
    rules = re.sub(r"\[\d+[mh]\]", "[10s]", rules)
    rules = re.sub(r"offset \d+[mh]", "offset 10s", rules)
    return re.sub(r"for: \d+[mh]", "for: 2s", rules)


class Prometheus:
    def __init__(self, workdir: Path, target: str, rules: Path) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(rules)],
            "scrape_configs": [{"job_name": "hc", "static_configs": [{"targets": [target]}]}],
        }
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.log = (workdir / "prometheus.log").open("wb")
        self.proc = subprocess.Popen(
            [PROMETHEUS, f"--config.file={workdir / 'prometheus.yml'}",
             f"--storage.tsdb.path={workdir / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=self.log, stderr=self.log,
        )
        self.wait(lambda: requests.get(f"{self.base}/-/ready", timeout=2).ok, "ready", 30)

    def query(self, expr: str) -> list[dict]:
        body = requests.get(f"{self.base}/api/v1/query", params={"query": expr}, timeout=5).json()
        assert body["status"] == "success", body
        return body["data"]["result"]

    def value(self, expr: str) -> float | None:
        """The value of a single-series expression, None while it has no series."""
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else None

    def firing(self) -> set[str]:
        body = requests.get(f"{self.base}/api/v1/alerts", timeout=5).json()
        return {a["labels"]["alertname"] for a in body["data"]["alerts"] if a["state"] == "firing"}

    def wait(self, check, what: str, timeout: float = 40) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if check():
                    return
            except requests.RequestException:
                pass
            time.sleep(0.25)
        raise AssertionError(f"timed out waiting for {what}")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(20)
        self.log.close()


@needs_prometheus
def test_alerts_fire_on_a_redis_outage_and_clear(database_url, tmp_path):
    redis_server = FaultyRedis(tmp_path).start()
    env = {"DATABASE_URL": database_url, "REDIS_URL": redis_server.url,
           "JWT_SECRET": JWT_SECRET, "GUNICORN_THREADS": "4", "WEB_THREADS": "4",
           "BREAKER_COOLDOWN": "0.5", "LOG_LEVEL": "WARNING", "RATE_LIMIT_USER": "0",
           "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prom"), "DATA_DIR": str(tmp_path)}
    rules = tmp_path / "alerts.yml"
    rules.write_text(shortened((OPS / "prometheus" / "alerts.yml").read_text()))
    stop = threading.Event()
    answered: list[int] = []
    try:
        with web(env, tmp_path / "web.log") as base:
            prom = Prometheus(tmp_path, base.removeprefix("http://"), rules)

            def traffic() -> None:
                session = requests.Session()
                while not stop.is_set():  # stops when the test does
                    for user in (11, 12, 13):
                        answered.append(session.get(f"{base}/api/reels/recently-viewed",
                                                    headers=bearer(user), timeout=5).status_code)
                    time.sleep(0.02)

            driver = threading.Thread(target=traffic, daemon=True)
            driver.start()
            try:
                # Healthy: scraped, and the recording rules produce their series.
                prom.wait(lambda: prom.value('up{job="hc"}') == 1, "scrape")
                for series in ("hc:cache_hit_ratio:rate5m", "hc:http_requests:rate5m",
                               "hc:http_request_duration_seconds:p99_5m",
                               "cache_outbox_relay_interval_seconds"):
                    prom.wait(lambda s=series: prom.query(s), f"series {series}")
                assert "HcCacheBreakerOpen" not in prom.firing()

                redis_server.kill9()  # the fault, under traffic
                prom.wait(lambda: "HcCacheBreakerOpen" in prom.firing(), "the breaker alert")
                during = len(answered)
                assert prom.value("max(cache_breaker_open)") == 1

                redis_server.start()  # back, empty
                prom.wait(lambda: "HcCacheBreakerOpen" not in prom.firing(),
                          "the breaker alert to clear")
                assert prom.value("max(cache_breaker_open)") == 0
                assert len(answered) > during  # traffic went on through the outage
            finally:
                stop.set()
                driver.join(10)
                prom.stop()
    finally:
        redis_server.stop()
    assert answered and set(answered) == {200}, set(answered)  # Postgres answered meanwhile


# --------------------------------------------------------------------------- Grafana

PROMQL_WORDS = {
    "sum", "max", "min", "avg", "count", "by", "without", "rate", "increase", "irate",
    "histogram_quantile", "offset", "and", "or", "unless", "on", "ignoring", "group_left",
    "group_right", "bool", "topk", "bottomk", "delta", "max_over_time", "min_over_time",
}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (label matchers, ranges, grouping
    clauses, strings, numbers and function names left out)."""
    expr = re.sub(r'"[^"]*"', "", expr)
    expr = re.sub(r"\{[^}]*\}|\[[^\]]*\]", "", expr)
    expr = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", expr)
    expr = re.sub(r"\b\d+(?:\.\d+)?[a-z]*\b", "", expr)  # numbers and durations (5m)
    names = set(re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", expr))
    return {n for n in names if n not in PROMQL_WORDS and not n.startswith("$")}


def exported_names(metrics_text: str) -> set[str]:
    names: set[str] = set()
    for line in metrics_text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            names.add(name)
            if kind == "histogram":
                names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
            if kind == "counter" and not name.endswith("_total"):
                names.add(f"{name}_total")
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def test_every_dashboard_query_names_an_exported_metric(client, auth):
    client.get("/api/reels/recently-viewed", headers=auth(5))
    exported = exported_names(client.get("/metrics").get_data(as_text=True))
    dashboard = json.loads((OPS / "grafana" / "dashboard.json").read_text())
    datasource = yaml.safe_load(
        (OPS / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())
    uid = datasource["datasources"][0]["uid"]
    queried: dict[str, set[str]] = {}
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == uid, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            queried[target["expr"]] = metric_names(target["expr"])
    assert all(queried.values()), [e for e, n in queried.items() if not n]
    unknown = {e: n - exported for e, n in queried.items() if n - exported}
    assert not unknown, unknown
    # The panels the runbook promises (docs/operations.md).
    every = set().union(*queried.values())
    for name in ("http_requests_total", "http_request_duration_seconds_bucket",
                 "cache_events_total", "cache_breaker_open", "rq_queue_depth", "rq_failed_jobs",
                 "cache_repairs_total", "cache_outbox_oldest_age_seconds"):
        assert name in every, name


def test_metric_names_of_a_query():
    assert metric_names('sum by (path) (rate(cache_events_total{outcome="hit"}[5m])) '
                        '/ 2 * max(x_seconds offset 5m)') == {"cache_events_total", "x_seconds"}
