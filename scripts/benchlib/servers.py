"""Servers of a benchmark run: Postgres and Redis, the bench databases, the service.

* Postgres / Redis: ``DATABASE_URL`` / ``REDIS_URL`` when set, else embedded servers under
  the bench data dir (``scripts/embedded.py``), stopped at the end if this run started them.
* Databases (created on that server, never the URL's own database): a template
  ``hcb_tpl_<sizes>`` holding the generated data set, its fingerprint in the database's
  comment so an unchanged data set is reused; each config runs on a fresh copy of it
  (``CREATE DATABASE ... TEMPLATE``), dropped afterwards.
* The service: the Procfile's own command lines (``web``, ``worker``, ``scheduler``), each
  in its own process group; ``web`` may be swapped for another server's command
  (``WEB_SERVERS``: gunicorn gthread with gunicorn.conf.py, or granian with web.py) so one
  run measures both.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import embedded  # scripts/embedded.py (scripts/bench puts scripts/ on sys.path)
import requests
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine, make_url

from service.settings import Settings

from .load import say

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Servers:
    database_url: str  # the server's own database: the bench creates its databases beside it
    redis_url: str
    data_dir: Path
    started: list[str] = field(default_factory=list)

    @classmethod
    def start(cls, data_dir: Path) -> Servers:
        db_url = os.environ.get("DATABASE_URL", "")
        redis_url = os.environ.get("REDIS_URL", "")
        settings = Settings(database_url=db_url, redis_url=redis_url, data_dir=str(data_dir))
        started: list[str] = []
        if db_url and redis_url:
            say("using DATABASE_URL and REDIS_URL from the environment")
        else:
            wanted = [n for n, u in (("postgres", db_url), ("redis", redis_url)) if not u]
            say(f"starting embedded {' and '.join(wanted)} under {data_dir}")
            settings = embedded.ensure_servers(settings, started=started)
        return cls(settings.database_url, settings.redis_url, data_dir, started)

    def stop(self) -> None:
        if self.started:
            say(f"stopping the embedded servers this run started: {', '.join(self.started)}")
            embedded.stop_servers(self.data_dir, self.started)

    def url_for(self, database: str) -> str:
        return make_url(self.database_url).set(database=database).render_as_string(
            hide_password=False)

    def admin(self) -> Engine:
        return create_engine(self.database_url, isolation_level="AUTOCOMMIT", pool_size=1,
                             max_overflow=0)


def libpq(url: str) -> str:
    """A SQLAlchemy URL as a libpq conninfo URL (for psycopg directly)."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def schema_heads() -> list[str]:
    from alembic.script import ScriptDirectory

    from storage.migrate import alembic_config

    return list(ScriptDirectory.from_config(alembic_config("postgresql://")).get_heads())


def _comment(admin: Engine, name: str) -> str | None:
    with admin.connect() as conn:
        return conn.execute(text(
            "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = :n"
        ), {"n": name}).scalar()


def _exists(admin: Engine, name: str) -> bool:
    with admin.connect() as conn:
        return conn.execute(text("SELECT 1 FROM pg_database WHERE datname = :n"),
                            {"n": name}).first() is not None


def ensure_template(servers: Servers, name: str, fp: str,
                    generate: Callable[[str], dict[str, int]]) -> tuple[dict[str, int], bool]:
    """The template database ``name`` holding the data set of fingerprint ``fp``.

    Reused when its comment carries ``fp``; else (re)created: migrated, ``generate(url)``
    loads it, VACUUM ANALYZE, then the comment is set last (a crash mid-way leaves no
    fingerprint, so the next run regenerates). Returns (row counts, reused?).
    """
    from storage.migrate import upgrade

    admin = servers.admin()
    try:
        comment = _comment(admin, name)
        if comment:
            stored = json.loads(comment)
            if stored.get("fingerprint") == fp:
                return stored["counts"], True
        exists = _exists(admin, name)
        with admin.connect() as conn:
            if exists:
                say(f"data set changed: dropping {name}")
                conn.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        url = servers.url_for(name)
        say(f"migrating {name}")
        upgrade(url)
        started = time.monotonic()
        counts = generate(url)
        engine = create_engine(url, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.execute(text("VACUUM ANALYZE"))
        engine.dispose()
        say(f"data set loaded in {time.monotonic() - started:.0f} s")
        payload = json.dumps({"fingerprint": fp, "counts": counts}).replace("'", "''")
        with admin.connect() as conn:
            conn.execute(text(f"COMMENT ON DATABASE \"{name}\" IS '{payload}'"))
        return counts, False
    finally:
        admin.dispose()


def clone(servers: Servers, template: str, name: str) -> str:
    """A fresh copy ``name`` of ``template`` (dropped first if present); returns its URL."""
    admin = servers.admin()
    try:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            version = conn.execute(text("SHOW server_version_num")).scalar_one()
            strategy = " STRATEGY = FILE_COPY" if int(version) >= 150000 else ""
            conn.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{template}"{strategy}'))
    finally:
        admin.dispose()
    return servers.url_for(name)


def drop(servers: Servers, name: str) -> None:
    admin = servers.admin()
    try:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


# The web process under each server the bench can compare (``--server``).
WEB_SERVERS = {
    "gunicorn": "exec gunicorn -c gunicorn.conf.py 'service:create_app()'",
    "granian": "exec python web.py",
}


def procfile_server() -> str:
    """Which of ``WEB_SERVERS`` the Procfile's ``web`` line runs ("other" if neither)."""
    web = procfile().get("web", "")
    return next((name for name, cmd in WEB_SERVERS.items() if cmd == web), "other")


def procfile() -> dict[str, str]:
    """The Procfile's process types and command lines."""
    out = {}
    for line in (ROOT / "Procfile").read_text().splitlines():
        name, sep, cmd = line.partition(":")
        if sep and not line.lstrip().startswith("#"):
            out[name.strip()] = cmd.strip()
    return out


class Service:
    """The service's processes for one config, as the Procfile runs them."""

    def __init__(self, env: dict[str, str], port: int, log_dir: Path,
                 processes: tuple[str, ...] = ("web", "worker", "scheduler"),
                 web_command: str | None = None) -> None:
        self.env = env
        self.web_command = web_command
        self.port = port
        self.log_dir = log_dir
        self.processes = processes
        self.procs: dict[str, subprocess.Popen] = {}
        self.base_url = f"http://127.0.0.1:{port}"

    def start(self, timeout: float = 60) -> None:
        """Start every process; returns once /readyz answers 200. Raises RuntimeError."""
        commands = procfile()
        if self.web_command:
            commands["web"] = self.web_command
        venv_bin = str(Path(sys.executable).parent)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for name in self.processes:
            env = {**self.env, "PATH": os.pathsep.join([venv_bin, os.environ.get("PATH", "")])}
            if name != "web":  # RQ workers fork per job: keep them out of the web's metrics
                env.pop("PROMETHEUS_MULTIPROC_DIR", None)
            log = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 - owned by Popen
            say(f"starting {name}: {commands[name]}")
            self.procs[name] = subprocess.Popen(
                ["/bin/sh", "-c", commands[name]], cwd=ROOT, env=env, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True,
            )
            log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited ({proc.returncode}); see "
                                       f"{self.log_dir / (name + '.log')}")
            try:
                if requests.get(f"{self.base_url}/readyz", timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"the service did not become ready in {timeout:.0f} s; see "
                           f"{self.log_dir}")

    def web_pids(self) -> list[int]:
        """The web server's main process and its workers."""
        import psutil

        proc = self.procs.get("web")
        if proc is None:
            return []
        master = psutil.Process(proc.pid)
        return [master.pid] + [c.pid for c in master.children(recursive=True)]

    def stop(self, timeout: float = 40) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for name, proc in self.procs.items():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                say(f"{name} did not stop in time: killing it")
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self.procs.clear()
