"""The results as a Markdown table (stdout), a JSON file and a PNG chart of the ratios.

Ratios are of throughput: ``a/b`` = as built / cache bypassed (the cache's speed-up over
Postgres through the same code), ``a/c`` = as built / ceiling (the share of the
framework's ceiling the endpoint reaches; 1.0 would be as fast as ``/healthz``).
"""

from __future__ import annotations

import json
from pathlib import Path

CONFIGS = {
    "a": "as built (cache on)",
    "b": "cache bypassed (CACHE_MODE=off, every read from Postgres)",
    "c": "ceiling (GET /healthz, same web server and config)",
}


def _num(value: float | None, fmt: str = "{:.0f}") -> str:
    return "–" if value is None else fmt.format(value)


def _cell(run: dict | None, field: str, fmt: str = "{:.0f}") -> str:
    if not run:
        return "–"
    if run.get("status") != "ok":
        return run.get("status", "?")
    return _num(run.get(field), fmt)


def _web_cores(run: dict | None) -> str:
    """CPU cores the web processes used during the run: well under the machine's cores
    while latency is high means the run waited (locks, I/O, or a busy shared host)."""
    cores = ((run or {}).get("cpu_cores") or {}).get("web")
    return "–" if cores is None else f"{cores:.2f}"


def markdown(result: dict) -> str:
    """The tables a reader needs: load per endpoint and config, then memory."""
    lines = [
        "| endpoint | a req/s | a p50 ms | a p99 ms | b req/s | b p50 ms | b p99 ms | a/b | a/c "
        "| hit % (a) | Redis RT/req (a) | SQL/req (a) | SQL/req (b) | non-2xx (a/b) "
        "| web cores (a/b) |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    ceiling = result["ceiling"].get("c")
    for ep in result["endpoints"].values():
        a, b = ep.get("a"), ep.get("b")
        hit = a.get("hit_rate") if a and a.get("status") == "ok" else None
        cells = [
            ep["label"], _cell(a, "rps"), _cell(a, "p50_ms", "{:.1f}"),
            _cell(a, "p99_ms", "{:.1f}"), _cell(b, "rps"), _cell(b, "p50_ms", "{:.1f}"),
            _cell(b, "p99_ms", "{:.1f}"), _num(ep.get("ratio_a_b"), "{:.2f}"),
            _num(ep.get("ratio_a_c"), "{:.2f}"),
            _num(hit * 100 if hit is not None else None, "{:.1f}"),
            _cell(a, "redis_round_trips_per_request", "{:.2f}"),
            _cell(a, "sql_queries_per_request", "{:.2f}"),
            _cell(b, "sql_queries_per_request", "{:.2f}"),
            "/".join(_cell(r, "non_2xx") for r in (a, b)),
            "/".join(_web_cores(r) for r in (a, b)),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append(
        f"| **ceiling** (c) `GET /healthz` | {_cell(ceiling, 'rps')} | "
        f"{_cell(ceiling, 'p50_ms', '{:.1f}')} | {_cell(ceiling, 'p99_ms', '{:.1f}')} "
        f"| | | | | 1.00 | | | | | | {_web_cores(ceiling)} |"
    )
    out = ["\n".join(lines)]
    servers_table = by_server(result)
    if servers_table:
        out.append(servers_table)
    runs = [r for r in (ceiling or {}).get("runs_rps") or [] if r]
    if len(runs) > 1:
        out.append("Ceiling measured before and after (a)'s endpoints: "
                   + " and ".join(f"{r:.0f}" for r in runs)
                   + " req/s; the table uses the faster run.")
    dropped = {c: sum((ep.get(c) or {}).get("warm_jobs_dropped") or 0
                      for ep in result["endpoints"].values()) for c in ("a", "b")}
    dropped["a"] += (ceiling or {}).get("warm_jobs_dropped") or 0  # (c) runs on (a)'s service
    if any(dropped.values()):
        out.append(f"Warm jobs queued by the active users' first requests, dropped before the "
                   f"measured runs because the warm-up had loaded the same keys: "
                   f"{dropped['a']} in (a), {dropped['b']} in (b). Measured runs are steady "
                   f"state for active users.")
    mem = result.get("memory") or {}
    redis_mem = mem.get("redis") or {}
    pg = mem.get("postgres") or {}
    if redis_mem or pg:
        rows = ["| memory | bytes | per |", "|---|--:|---|"]
        if redis_mem.get("bytes_per_active_user_mean") is not None:
            rows.append(f"| Redis, per active user (mean over "
                        f"{redis_mem['users_with_keys']} users) | "
                        f"{redis_mem['bytes_per_active_user_mean']:.0f} | user |")
        for fam, v in (redis_mem.get("per_user_family") or {}).items():
            rows.append(f"| Redis `{{u:<id>}}:{fam}` | {v['bytes_mean']:.0f} | key "
                        f"({v['keys']} keys) |")
        for fam, v in (redis_mem.get("entities") or {}).items():
            rows.append(f"| Redis entity cache `{fam}` ({v['keys']} entities; with version "
                        f"copy {v['bytes_per_entity_with_version']:.0f}) | "
                        f"{v['bytes_per_entity']:.0f} | entity |")
        tracked = redis_mem.get("tracked_views") or {}
        for name, table in (("group_feed_item_view", "feed_item_views"),
                            ("reel_view", "reel_views")):
            t = tracked.get(name)
            pg_row = (pg.get(table) or {}).get("bytes_per_row")
            if t and t.get("bytes_per_view") is not None:
                rows.append(f"| Redis per tracked {name.replace('_', ' ')} "
                            f"({t['views']} views in {t['keys']} keys) | "
                            f"{t['bytes_per_view']:.1f} | view |")
            if pg_row is not None:
                rows.append(f"| Postgres `{table}` (heap + indexes) | {pg_row:.1f} | row |")
        for fam, v in (redis_mem.get("shared") or {}).items():
            rows.append(f"| Redis shared `{fam}` | {v['bytes']} | all {v['keys']} keys |")
        for table, v in pg.items():
            if table not in ("feed_item_views", "reel_views") and v.get("bytes_per_row"):
                rows.append(f"| Postgres `{table}` ({v['rows']} rows) | "
                            f"{v['bytes_per_row']:.1f} | row |")
        out.append("\n".join(rows))
    return "\n\n".join(out)


def by_server(result: dict) -> str:
    """Config (a) and its ceiling on each web server of the run (``--server both``):
    req/s, the share of that server's own ceiling, and the ratio to the first server."""
    names = (result.get("meta") or {}).get("web_servers") or []
    ceilings = result["ceiling"].get("by_server") or {}
    if len(names) < 2 or not ceilings:
        return ""
    base = names[0]
    head = ["endpoint"]
    for name in names:
        head += [f"{name} req/s", f"{name} p99 ms", f"× {name} ceiling"]
    head += [f"{name} / {base}" for name in names[1:]]
    rows = ["| " + " | ".join(head) + " |", "|---" + "|--:" * (len(head) - 1) + "|"]

    def row(label: str, runs: dict, ceiling: bool) -> str:
        cells = [label]
        for name in names:
            run, top = runs.get(name), ceilings.get(name) or {}
            ok = bool(run and run.get("status") == "ok" and top.get("status") == "ok"
                      and top.get("rps"))
            cells += [_cell(run, "rps"), _cell(run, "p99_ms", "{:.1f}"),
                      "1.00" if ceiling else _num(run["rps"] / top["rps"] if ok else None,
                                                  "{:.2f}")]
        first = runs.get(base) or {}
        for name in names[1:]:
            run = runs.get(name) or {}
            ok = run.get("status") == "ok" and first.get("status") == "ok" and first.get("rps")
            cells.append(_num(run["rps"] / first["rps"] if ok else None, "{:.2f}"))
        return "| " + " | ".join(cells) + " |"

    for ep in result["endpoints"].values():
        rows.append(row(ep["label"], ep.get("by_server") or {}, False))
    rows.append(row("**ceiling** `GET /healthz`", ceilings, True))
    return (f"Config (a) on each web server, same run (primary: {base}, which (b), the "
            f"memory figures and the profile used):\n\n" + "\n".join(rows))


def write_json(result: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, sort_keys=False, default=str) + "\n")


def chart(result: dict, path: Path) -> None:
    """Two horizontal bar charts: a/b (log scale) and a/c, one bar per endpoint measured."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, NullFormatter

    eps = list(result["endpoints"].values())
    names = [ep["label"] for ep in eps]
    ab = [ep.get("ratio_a_b") for ep in eps]
    ac = [ep.get("ratio_a_c") for ep in eps]
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 0.45 * len(names) + 2), sharey=True)
    ys = list(range(len(names)))
    left.barh(ys, [v or 0 for v in ab],
              color=["#2a9d8f" if (v or 0) >= 1 else "#e76f51" for v in ab])
    left.set_xscale("log")
    known = [v for v in ab if v] or [1.0]
    left.set_xlim(min(0.5, min(known) / 1.5), max(2.0, max(known) * 1.5))
    left.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    left.xaxis.set_minor_formatter(NullFormatter())
    left.set_title("a/b: throughput, cache on / cache bypassed (log)")
    right.barh(ys, [v or 0 for v in ac], color="#264653")
    right.set_xlim(0, max(1.05, max([v or 0 for v in ac] or [0]) * 1.1))
    right.set_title("a/c: throughput, cache on / ceiling (GET /healthz)")
    for ax in (left, right):
        ax.axvline(1, color="black", linewidth=0.8)
    left.set_yticks(ys, names)
    left.invert_yaxis()
    for ax, values, home in ((left, ab, 1.0), (right, ac, 0.0)):
        for y, v in zip(ys, values, strict=True):
            ax.text(v if v else home, y, f" {v:.2f}" if v else " not measured", va="center",
                    fontsize=8)
    meta = result["meta"]
    fig.suptitle(f"scripts/bench: {meta['users']} users, scale {meta['scale']}, "
                 f"{meta['duration_s']} s per run, {meta['connections']} connections")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
