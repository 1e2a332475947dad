"""Counters from the service's ``/metrics``, and what one load run added to them.

Under gunicorn every scrape reports the sum over all worker processes, so the difference
of two scrapes around a run is that run's work: cache outcomes per read path
(``cache_events_total``), Redis round trips (``redis_round_trips_total``), SQL statements
(``db_queries_total``) and requests served (``http_requests_total``).
"""

from __future__ import annotations

from collections import defaultdict

import requests
from prometheus_client.parser import text_string_to_metric_families

Sample = tuple[str, tuple[tuple[str, str], ...]]
WANTED = ("cache_events", "redis_round_trips", "db_queries", "http_requests")


def scrape(base_url: str) -> dict[Sample, float]:
    """The counters of ``WANTED`` as {(sample name, sorted labels): value}."""
    body = requests.get(f"{base_url}/metrics", timeout=10).text
    out: dict[Sample, float] = {}
    for family in text_string_to_metric_families(body):
        if family.name not in WANTED:
            continue
        for s in family.samples:
            if s.name.endswith("_total"):
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def run_counters(before: dict[Sample, float], after: dict[Sample, float]) -> dict:
    """Per-request figures of one run from two scrapes around it."""
    delta = {k: v - before.get(k, 0.0) for k, v in after.items()}
    served = 0.0
    statuses: dict[str, float] = defaultdict(float)
    outcomes: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    round_trips = 0.0
    queries = 0.0
    for (name, labels), value in delta.items():
        lab = dict(labels)
        if not value:
            continue
        if name == "http_requests_total" and lab.get("endpoint") != "metrics.metrics":
            served += value
            statuses[lab.get("status", "?")] += value
        elif name == "cache_events_total":
            outcomes[lab["path"]][lab["outcome"]] += value
        elif name == "redis_round_trips_total":
            round_trips += value
        elif name == "db_queries_total":
            queries += value
    hits = sum(o.get("hit", 0) for o in outcomes.values())
    answered = sum(o.get("hit", 0) + o.get("miss", 0) + o.get("fallback", 0)
                   for o in outcomes.values())
    return {
        "served": served,
        "statuses": dict(statuses),
        "cache_outcomes": {p: dict(o) for p, o in sorted(outcomes.items())},
        "hit_rate": hits / answered if answered else None,
        "redis_round_trips_per_request": round_trips / served if served else None,
        "sql_queries_per_request": queries / served if served else None,
    }
