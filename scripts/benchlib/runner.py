"""One benchmark run: data set, then config (a) and config (b) on fresh copies of it, each
under the Procfile's processes, every endpoint loaded by wrk; the ceiling (c) on (a).
With several web servers (``--server both``), (a) and its ceiling run once per server, each
on a fresh copy; (b), the memory figures and the profile run on the primary server only
(the Procfile's, when it is among them).

Per endpoint and config: warm-up (wrk walking the request lines in order, so it touches
as many users as it can), then a scrape of /metrics, the measured wrk run (random lines),
another scrape, and the CPU each process kind used meanwhile.
"""

from __future__ import annotations

import os
import platform
import random
import secrets
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil
import requests

from . import data, endpoints, memory, report, scrape, servers
from .endpoints import CEILING, ENDPOINTS, Endpoint, Fixture
from .load import LoadShape, ensure_wrk, run_wrk, say, warm_every_line


@dataclass(frozen=True)
class Options:
    scale: float
    duration_s: int
    warmup_s: int
    shape: LoadShape
    web_concurrency: int
    active_users: int
    cursor_users: int
    cursor_depth: int
    data_dir: Path
    out: Path
    chart: Path
    key_prefix: str
    only: tuple[str, ...]
    processes: tuple[str, ...]
    profile: str  # "none", "auto" or an endpoint name
    profile_s: int
    seed: int
    progress: bool
    web_servers: tuple[str, ...] = ("procfile",)  # names of servers.WEB_SERVERS, or procfile


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _clear_cache(redis_url: str, prefix: str, queue_prefix: str) -> None:
    import redis
    from rq import Queue

    from cache.client import Cache
    from cache.keys import Keyspace
    from cache.keyspace_admin import clear_keyspace

    client = redis.Redis.from_url(redis_url, socket_timeout=30)
    cleared = clear_keyspace(Cache(client, Keyspace(prefix)))
    for name in ("default", "warm"):
        Queue(queue_prefix + name, connection=client).empty()
    say(f"cleared {cleared} cache keys under {prefix!r} and the bench's RQ queues")
    client.close()


def _settle_warm_queue(redis_url: str, queue_prefix: str, wait_s: float = 30.0) -> int:
    """Drop the queued warm jobs and wait (bounded) for the running one; returns how many
    were dropped.

    The first request of each active user enqueues a warm job (jobs/warm.py) that loads
    every read path for them; the bench has just loaded the same keys itself (warm-up), so
    that backlog is redundant. Left alone it would keep the worker busy for minutes (about
    4 users/s at the default scale, mostly the personalized ranking) and take CPU from the
    web processes during the measured runs of (a) only. Measured runs are steady state for
    active users; returning users' warming is its own cost (rebuild rate, issue 6).
    """
    import redis
    from rq import Queue
    from rq.registry import StartedJobRegistry

    client = redis.Redis.from_url(redis_url, socket_timeout=30)
    try:
        queue = Queue(queue_prefix + "warm", connection=client)
        dropped = queue.empty()
        started = StartedJobRegistry(queue=queue)
        deadline = time.monotonic() + wait_s
        while started.count and time.monotonic() < deadline:
            time.sleep(0.1)
        return int(dropped or 0)
    finally:
        client.close()


class _Cpu:
    """CPU seconds used by each kind of process between two snapshots."""

    def __init__(self, service: servers.Service) -> None:
        self.web = set(service.web_pids())
        self.jobs = {p for name, proc in service.procs.items() if name != "web"
                     for p in _tree(proc.pid)}

    def kind(self, proc: psutil.Process) -> str:
        if proc.pid in self.web:
            return "web"
        if proc.pid in self.jobs or proc.info["ppid"] in self.jobs:
            return "jobs"  # the second test: an RQ work-horse forked for one job
        name = proc.info["name"] or ""
        if name.startswith("postgres"):
            return "postgres"
        if name.startswith("redis"):
            return "redis"
        if name == "wrk":
            return "wrk"
        return "other"

    def snapshot(self) -> dict[int, tuple[str, float]]:
        out = {}
        for proc in psutil.process_iter(["name", "ppid", "cpu_times"]):
            times = proc.info["cpu_times"]
            if times is None:
                continue
            kind, used = self.kind(proc), times.user + times.system
            if kind == "jobs" and proc.pid in self.jobs:
                # RQ forks a work-horse per job: most live between two snapshots, so
                # their CPU shows only in the worker's reaped-children times.
                used += times.children_user + times.children_system
            out[proc.pid] = (kind, used)
        return out

    @staticmethod
    def cores(before: dict, after: dict, seconds: float) -> dict[str, float]:
        used: dict[str, float] = {}
        for pid, (kind, t) in after.items():
            used[kind] = used.get(kind, 0.0) + t - before.get(pid, (kind, 0.0))[1]
        return {k: round(v / seconds, 2) for k, v in sorted(used.items()) if v > 0}


def _tree(pid: int) -> list[int]:
    try:
        proc = psutil.Process(pid)
        return [pid] + [c.pid for c in proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


class Bench:
    def __init__(self, opts: Options) -> None:
        self.opts = opts
        self.wrk = ensure_wrk()
        self.secret = secrets.token_urlsafe(32)
        self.rng = random.Random(opts.seed)
        self.work = opts.data_dir / "run"
        self.work.mkdir(parents=True, exist_ok=True)

    # --- one endpoint -----------------------------------------------------------------------

    def measure(self, ep: Endpoint, svc: servers.Service, fx: Fixture,
                routes: set[tuple[str, str]]) -> dict:
        if not ep.available(routes):
            say(f"{ep.name}: {ep.method} {ep.route} is not in /openapi.json: missing")
            return {"status": "missing"}
        if ep.needs:
            fx.cursors[ep.needs] = endpoints.prepare_cursors(
                svc.base_url, fx, self.opts.cursor_users, self.opts.cursor_depth)
        lines = ep.build(fx, random.Random(self.opts.seed + len(ep.name)),
                         max(200, len(fx.users)))
        if not lines:
            say(f"{ep.name}: nothing to request (no data for it): skipped")
            return {"status": "no data"}
        method, path, token, body = lines[0]
        probe = requests.request(method, svc.base_url + path, data=body or None, timeout=30,
                                 headers={"Authorization": f"Bearer {token}",
                                          **({"Content-Type": "application/json"} if body
                                             else {})})
        if probe.status_code >= 400:
            say(f"{ep.name}: probe {method} {path} answered {probe.status_code}: skipped")
            return {"status": f"HTTP {probe.status_code}", "detail": probe.text[:300]}
        requests_file = self.work / f"{ep.name}.requests"
        requests_file.write_text("".join("\t".join(x) + "\n" for x in lines))
        # Reads are measured warm (every active user's keys loaded once); writes and
        # deliberately uncached reads skip it.
        if ep.kind == "read" and "invalidate_cache=true" not in path:
            warm_every_line(svc.base_url, lines)
        if self.opts.warmup_s:
            run_wrk(self.wrk, svc.base_url, requests_file, self.opts.warmup_s, self.opts.shape,
                    mode="seq")
        warm_dropped = _settle_warm_queue(svc.env["RQ_REDIS_URL"], svc.env["RQ_QUEUE_PREFIX"])
        cpu = _Cpu(svc)
        before, cpu_before, t0 = scrape.scrape(svc.base_url), cpu.snapshot(), time.monotonic()
        w = run_wrk(self.wrk, svc.base_url, requests_file, self.opts.duration_s,
                    self.opts.shape)
        cpu_after, elapsed = cpu.snapshot(), time.monotonic() - t0
        after = scrape.scrape(svc.base_url)
        out = {
            "status": "ok",
            "rps": w["rps"],
            "p50_ms": w["p50_us"] / 1000,
            "p90_ms": w["p90_us"] / 1000,
            "p99_ms": w["p99_us"] / 1000,
            "max_ms": w["max_us"] / 1000,
            "requests": w["requests"],
            "non_2xx": w["errors_status"],
            "socket_errors": w["socket_errors"],
            "request_lines": len(lines),
            "cpu_cores": _Cpu.cores(cpu_before, cpu_after, elapsed),
            "warm_jobs_dropped": warm_dropped,
            **scrape.run_counters(before, after),
        }
        hit = out["hit_rate"]
        say(f"{ep.name}: {out['rps']:.0f} req/s, p50 {out['p50_ms']:.1f} ms, "
            f"p99 {out['p99_ms']:.1f} ms, hit {'-' if hit is None else f'{hit:.0%}'}, "
            f"SQL/req {out['sql_queries_per_request'] or 0:.2f}, non-2xx {out['non_2xx']}")
        return out

    # --- one config -------------------------------------------------------------------------

    def run_config(self, config: str, srv: servers.Servers, template: str, fx: Fixture,
                   result: dict, server: str = "procfile", primary: bool = True) -> None:
        """Config ``config`` under web server ``server``. The primary run fills the
        table's columns (``ep[config]``, the ceiling ``c``, memory, profile); with several
        servers every (a) run also lands in ``ep["by_server"][server]`` and
        ``result["ceiling"]["by_server"][server]``."""
        db_name = f"hcb_run_{os.getpid()}"
        say(f"config ({config}) on {server}: {report.CONFIGS[config]}")
        db_url = servers.clone(srv, template, db_name)
        queue_prefix = "bench-"
        _clear_cache(srv.redis_url, self.opts.key_prefix, queue_prefix)
        port = free_port()
        env = {
            **os.environ,
            "DATABASE_URL": db_url,
            "REDIS_URL": srv.redis_url,
            "RQ_REDIS_URL": srv.redis_url,
            "CACHE_KEY_PREFIX": self.opts.key_prefix,
            "RQ_QUEUE_PREFIX": queue_prefix,
            "JWT_SECRET": self.secret,
            "DATA_DIR": str(self.opts.data_dir),
            "PORT": str(port),
            "WEB_CONCURRENCY": str(self.opts.web_concurrency),
            "PROMETHEUS_MULTIPROC_DIR": str(self.opts.data_dir / f"prometheus-{config}"),
            "CACHE_MODE": "on" if config == "a" else "off",
            "PYTHONUNBUFFERED": "1",
        }
        env.pop("BIND", None)
        svc = servers.Service(env, port, self.opts.data_dir / "logs" / f"{config}-{server}",
                              self.opts.processes, servers.WEB_SERVERS.get(server))
        compare = config == "a" and len(self.opts.web_servers) > 1
        try:
            svc.start()
            routes = endpoints.routes_of(
                requests.get(f"{svc.base_url}/openapi.json", timeout=10).json())
            # Every active user signs in once, so no measured run sees a user come back
            # from idle (which queues a warm job); the cheapest signed-in read does it.
            warm_every_line(svc.base_url, [
                ("GET", "/api/reels/recently-viewed?page=1&per_page=1", fx.tokens[u], "")
                for u in fx.users])
            if config == "a":
                first = self.measure(CEILING, svc, fx, routes)
            for ep in self._selected():
                run = self.measure(ep, svc, fx, routes)
                if primary:
                    result["endpoints"][ep.name][config] = run
                if compare:
                    result["endpoints"][ep.name].setdefault("by_server", {})[server] = run
            if config == "a":
                # The ceiling is measured before and after the endpoints; the faster run is
                # (c) (the other was slowed by something outside the service: shared host).
                runs = [first, self.measure(CEILING, svc, fx, routes)]
                ok = [r for r in runs if r.get("status") == "ok"]
                best = max(ok, key=lambda r: r["rps"]) if ok else first
                ceiling = {
                    **best, "runs_rps": [r.get("rps") for r in runs],
                    "warm_jobs_dropped": sum(r.get("warm_jobs_dropped") or 0 for r in runs)}
                if compare:
                    result["ceiling"].setdefault("by_server", {})[server] = ceiling
                if not primary:
                    return
                result["ceiling"]["c"] = ceiling
                say("measuring Redis memory per active user and per tracked view")
                result["memory"]["redis"] = memory.redis_memory(
                    srv.redis_url, self.opts.key_prefix, fx.users, db_url)
                self._fill_ratios(result)
                self.profile(svc, fx, routes, result)
        finally:
            svc.stop()
            servers.drop(srv, db_name)

    def _web_servers(self) -> list[str]:
        """The servers to run (a) on, primary first: the Procfile's server when listed."""
        names = [servers.procfile_server() if n == "procfile" else n
                 for n in self.opts.web_servers]
        names = list(dict.fromkeys(names))
        home = servers.procfile_server()
        return sorted(names, key=lambda n: n != home)

    def _selected(self) -> list[Endpoint]:
        return [e for e in ENDPOINTS if not self.opts.only or e.name in self.opts.only]

    @staticmethod
    def _fill_ratios(result: dict) -> None:
        ceiling = result["ceiling"].get("c") or {}
        for ep in result["endpoints"].values():
            a, b = ep.get("a") or {}, ep.get("b") or {}
            ok = a.get("status") == "ok"
            ep["ratio_a_b"] = (a["rps"] / b["rps"] if ok and b.get("status") == "ok"
                               and b["rps"] else None)
            ep["ratio_a_c"] = (a["rps"] / ceiling["rps"] if ok and ceiling.get("status") == "ok"
                               and ceiling["rps"] else None)

    # --- profile ----------------------------------------------------------------------------

    def profile(self, svc: servers.Service, fx: Fixture, routes: set, result: dict) -> None:
        """py-spy on the web processes while wrk loads the slowest read path (lowest a/c)."""
        choice = self.opts.profile
        if choice == "none":
            return
        reads = {n: ep for n, ep in result["endpoints"].items()
                 if ep["kind"] == "read" and ep.get("ratio_a_c") is not None}
        if choice == "auto":
            if not reads:
                return
            choice = min(reads, key=lambda n: reads[n]["ratio_a_c"])
        ep = next((e for e in ENDPOINTS if e.name == choice), None)
        if ep is None or result["endpoints"].get(choice, {}).get("a", {}).get("status") != "ok":
            say(f"profile: {choice} was not measured: skipped")
            return
        pyspy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        if not Path(pyspy).exists():
            say("profile: py-spy is not installed (.venv/bin/pip install py-spy): skipped")
            result["profile"] = {"endpoint": choice, "status": "py-spy not installed"}
            return
        from .profile import summarise

        raw = self.opts.data_dir / f"profile-{choice}.txt"
        seconds = self.opts.profile_s
        cmd = [pyspy, "record", "--pid", str(svc.web_pids()[0]), "--subprocesses",
               "--rate", "100", "--gil", "--duration", str(seconds), "--format", "raw",
               "--output", str(raw)]
        say(f"profiling {choice} for {seconds} s: {' '.join(cmd)}")
        spy = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
        time.sleep(1)
        requests_file = self.work / f"{choice}.requests"
        run_wrk(self.wrk, svc.base_url, requests_file, seconds + 2, self.opts.shape)
        out, _ = spy.communicate(timeout=60)
        if spy.returncode != 0 or not raw.exists():
            say(f"profile: py-spy failed: {out[-500:]}")
            result["profile"] = {"endpoint": choice, "status": "py-spy failed",
                                 "detail": out[-500:]}
            return
        result["profile"] = {"endpoint": choice, "status": "ok", "raw": str(raw),
                             **summarise(raw)}

    # --- the whole run ----------------------------------------------------------------------

    def run(self) -> dict:
        opts = self.opts
        started = time.time()
        sizes = data.BenchSizes(seed=opts.seed).scaled(opts.scale)
        srv = servers.Servers.start(opts.data_dir)
        try:
            fp = data.fingerprint(sizes, servers.schema_heads())
            tag = f"{sizes.users}u_" + data.fingerprint(sizes, ())[:8]
            template = f"hcb_tpl_{tag}"
            counts, reused = servers.ensure_template(
                srv, template, fp,
                lambda url: data.generate(servers.libpq(url), sizes, opts.progress))
            say(f"data set {template}: {'reused' if reused else 'generated'} "
                f"({sum(counts.values()):,} rows)")
            tpl_url = srv.url_for(template)
            fx = Fixture.load(tpl_url, min(opts.active_users, sizes.users), self.secret,
                              opts.seed)
            result = {
                "meta": self._meta(sizes, fp, counts, reused),
                "configs": report.CONFIGS,
                "endpoints": {
                    e.name: {"label": e.label, "kind": e.kind, "method": e.method,
                             "route": e.route}
                    for e in self._selected()
                },
                "ceiling": {"label": CEILING.label, "route": CEILING.route},
                "memory": {"postgres": memory.postgres_bytes_per_row(tpl_url)},
            }
            web = self._web_servers()
            result["meta"]["web_servers"] = web
            for i, server in enumerate(web):
                self.run_config("a", srv, template, fx, result, server, primary=i == 0)
            self.run_config("b", srv, template, fx, result, web[0])
            self._fill_ratios(result)
            result["meta"]["seconds"] = round(time.time() - started, 1)
            return result
        finally:
            srv.stop()

    def _meta(self, sizes: data.BenchSizes, fp: str, counts: dict, reused: bool) -> dict:
        opts = self.opts
        return {
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                        "platform": platform.platform(),
                        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1)},
            "scale": opts.scale,
            "users": sizes.users,
            "sizes": asdict(sizes),
            "rows": counts,
            "dataset_fingerprint": fp,
            "dataset_reused": reused,
            "duration_s": opts.duration_s,
            "warmup_s": opts.warmup_s,
            "connections": opts.shape.connections,
            "wrk_threads": opts.shape.threads,
            "web_concurrency": opts.web_concurrency,
            "gunicorn_threads": int(os.environ.get("GUNICORN_THREADS") or 4),
            "web_threads": int(os.environ.get("WEB_THREADS") or 4),
            "processes": list(opts.processes),
            "active_users": opts.active_users,
            "wrk": subprocess.run([self.wrk, "--version"], capture_output=True, text=True,
                                  check=False).stdout.splitlines()[0:1],
        }
