"""The web process: granian (WSGI interface) serving ``service:create_app()``.

    python web.py                   # what the Procfile's ``web`` line runs
    python web.py module:factory    # another WSGI app factory (tests)

Chosen over gunicorn gthread by ``scripts/bench --server both`` (docs/operations.md, "Web
server"): granian's Rust side reads each request head before any Python thread sees it,
so slow or silent clients hold no thread, and the ceiling is about twice gunicorn's.

Environment:
  BIND                      host:port, overrides the next one
  PORT                      port on 127.0.0.1 (default 8000)
  WEB_CONCURRENCY           worker processes (default 2)
  WEB_THREADS               Python threads per worker running requests (default 4)
  WEB_HEADER_TIMEOUT        seconds a client has to send a request head (default 10)
  PROMETHEUS_MULTIPROC_DIR  metrics dir shared by the workers
                            (default <DATA_DIR>/prometheus-web, DATA_DIR default ./.data)
  LOG_LEVEL                 the server's own log level (default info)

What gunicorn.conf.py did, kept here: the settings are checked first (one line, nothing
written, exit status 1); the metrics dir is set before anything imports prometheus_client
and emptied at start; SIGTERM lets in-flight requests finish (30 s, then the worker is
killed); a worker that dies is replaced. Dead workers' live gauges are dropped at scrape
time (``service.metrics``), since granian has no child-exit hook.
"""

from __future__ import annotations

import glob
import os
import sys

GRACEFUL_TIMEOUT = 30  # seconds in-flight requests get after SIGTERM
MAX_HEAD_BYTES = 64 * 1024  # a request head over this: granian's own 431 (empty body)


def _metrics_dir() -> str:
    return os.path.abspath(
        os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        or os.path.join(os.environ.get("DATA_DIR") or "./.data", "prometheus-web")
    )


def _bind() -> tuple[str, int]:
    bind = os.environ.get("BIND") or f"127.0.0.1:{os.environ.get('PORT') or '8000'}"
    host, _, port = bind.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


def main(argv: list[str]) -> None:
    # Before anything imports prometheus_client (it reads the variable at import time);
    # the workers are forked from this process and inherit it. Only the web's processes
    # use this dir: RQ workers fork per job and must keep out of it.
    metrics_dir = _metrics_dir()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir

    from service.settings import require_jwt_secret, require_server_urls

    # Refuse to start, with one line, before anything is created on disk.
    require_server_urls(os.environ.get("DATABASE_URL", ""), os.environ.get("REDIS_URL", ""))
    require_jwt_secret(os.environ.get("JWT_SECRET", ""))

    from granian.constants import Interfaces
    from granian.http import HTTP1Settings
    from granian.log import LogLevels
    from granian.server import Server

    # Every run starts with an empty metrics dir (only what prometheus_client writes):
    # files of a previous run's workers would be summed into this run's counters.
    os.makedirs(metrics_dir, exist_ok=True)
    for path in glob.glob(os.path.join(metrics_dir, "*.db")):
        os.remove(path)

    host, port = _bind()
    level = (os.environ.get("LOG_LEVEL") or "info").lower()
    server = Server(
        argv[0] if argv else "service:create_app",
        address=host,
        port=port,
        interface=Interfaces.WSGI,
        factory=True,
        workers=int(os.environ.get("WEB_CONCURRENCY") or 2),
        # Requests wait on Redis or Postgres most of the time: a few threads per process
        # overlap those waits. Keep them <= DB_POOL_SIZE (default 10) so a thread never
        # waits on the pool because of its siblings.
        blocking_threads=int(os.environ.get("WEB_THREADS") or 4),
        http1_settings=HTTP1Settings(
            header_read_timeout=int(float(os.environ.get("WEB_HEADER_TIMEOUT") or 10) * 1000),
            # A request head may be this big (granian's default is 400 KiB): bounds the
            # memory each slow client holds; service.server_limits answers heads over its
            # own limits (8 KiB per URL or header field) with the JSON error.
            max_buffer_size=MAX_HEAD_BYTES),
        workers_kill_timeout=GRACEFUL_TIMEOUT,
        respawn_failed_workers=True,
        log_level=LogLevels(level if level in {lv.value for lv in LogLevels} else "info"),
        # The app logs one JSON line per request itself.
        log_access=False,
    )
    server.serve()


if __name__ == "__main__":
    main(sys.argv[1:])
