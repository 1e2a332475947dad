"""Gunicorn settings for the web process (``gunicorn -c gunicorn.conf.py 'service:create_app()'``).

Environment:
  BIND                      full bind address, overrides the next one
  PORT                      port on 127.0.0.1 (default 8000)
  WEB_CONCURRENCY           worker processes (default 2)
  GUNICORN_THREADS          threads per worker (default 4)
  PROMETHEUS_MULTIPROC_DIR  metrics dir shared by the workers
                            (default <DATA_DIR>/prometheus-web, DATA_DIR default ./.data)
  LOG_LEVEL                 gunicorn's own log level (default info)
"""

import glob
import json
import os

# Must be in the environment before anything imports prometheus_client (which reads it at
# import time): this file is loaded by the master before the app, and workers inherit it.
# Only the web's processes use this dir; RQ workers fork per job and must keep out of it.
_metrics_dir = os.path.abspath(
    os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    or os.path.join(os.environ.get("DATA_DIR") or "./.data", "prometheus-web")
)
os.environ["PROMETHEUS_MULTIPROC_DIR"] = _metrics_dir

from gunicorn import util  # noqa: E402

from service.settings import require_jwt_secret, require_server_urls  # noqa: E402

# Refuse to start, with one line, before anything is created on disk: the app never starts
# servers of its own and never signs with a default secret (`make run` provides embedded
# servers and a development secret).
require_server_urls(os.environ.get("DATABASE_URL", ""), os.environ.get("REDIS_URL", ""))
require_jwt_secret(os.environ.get("JWT_SECRET", ""))

bind = [os.environ.get("BIND") or f"127.0.0.1:{os.environ.get('PORT') or '8000'}"]
workers = int(os.environ.get("WEB_CONCURRENCY") or 2)

# gthread, not sync: every request spends most of its time waiting on Redis or Postgres,
# so a few threads per process overlap those waits and keep-alive connections do not pin a
# whole process (as they would with sync workers). Real OS threads keep psycopg, redis-py
# and hiredis unpatched (no gevent monkey-patching). Keep threads <= DB_POOL_SIZE (default
# 10) so a thread never waits on the pool just because of its siblings.
worker_class = "gthread"
threads = int(os.environ.get("GUNICORN_THREADS") or 4)

timeout = 30  # a worker silent for this long is killed and replaced
graceful_timeout = 30  # on SIGTERM, in-flight requests get this long to finish
keepalive = 5

# The app logs one JSON line per request itself; gunicorn's access log would duplicate it.
accesslog = None
errorlog = "-"
loglevel = (os.environ.get("LOG_LEVEL") or "info").lower()

# No gunicornc control socket: its default path ($HOME/.gunicorn/gunicorn.ctl) is shared by
# every gunicorn of the user, so two instances (a dev run and a benchmark) would collide.
# Signals (HUP, TTIN, TTOU, TERM) to the master do the same jobs. Ignored by gunicorn < 25.
control_socket_disable = True

# Worker heartbeat files on tmpfs: a slow disk cannot make a healthy worker look dead.
if os.path.isdir("/dev/shm"):
    worker_tmp_dir = "/dev/shm"


def on_starting(server):
    """Start every run with an empty metrics dir: files left by a previous run's workers
    would otherwise be summed into this run's counters."""
    os.makedirs(_metrics_dir, exist_ok=True)
    # Remove only what prometheus_client writes (*.db), in case the variable points at a
    # directory that holds anything else.
    for path in glob.glob(os.path.join(_metrics_dir, "*.db")):
        os.remove(path)


def child_exit(server, worker):
    """Fold a dead worker's live gauges out of the multiprocess metrics."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def _json_error(sock, status_int, reason, mesg):
    """The contract's JSON error for requests gunicorn refuses before the app sees them
    (bad framing 400, URI too long 414, header fields too large 431, ...). gunicorn writes
    an HTML page there, and its one place to change that is ``util.write_error``."""
    from service.errors import CODES

    body = json.dumps({
        "error": reason,
        "code": CODES.get(status_int, "bad_request"),
        "details": {"server": mesg[:200]} if mesg else {},
    }).encode()
    head = (f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")
    util.write_nonblock(sock, head.encode("latin1") + body)


util.write_error = _json_error
