"""Sentry error tracking: with ``SENTRY_DSN`` pointed at a local HTTP endpoint, an unhandled
error of a request, a failed RQ job and a scheduled job's check-ins arrive as envelopes, with
no token, password or Authorization header in them; without a DSN nothing is set up."""

from __future__ import annotations

import gzip
import json
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import redis
import sentry_sdk
from rq import Queue, SimpleWorker

from jobs.scheduler import Periodic, run_once
from service import create_app
from service.auth import make_token
from service.error_tracking import init_error_tracking
from tests.support.auth import JWT_SECRET

PASSWORD = "hunter2-not-for-sentry"


class Envelopes:
    """A local stand-in for Sentry's ingest: keeps every envelope body it receives."""

    def __init__(self) -> None:
        bodies = self.bodies = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.headers.get("Content-Encoding") == "gzip":
                    raw = gzip.decompress(raw)
                bodies.append(raw.decode("utf-8", "replace"))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.dsn = f"http://publickey@127.0.0.1:{self.server.server_port}/1"

    def items(self) -> list[tuple[dict, dict | str]]:
        """(item header, payload) of every item of every envelope received so far."""
        out = []
        for body in list(self.bodies):
            lines = body.split("\n")
            for header, payload in zip(lines[1::2], lines[2::2], strict=False):
                if header.strip():
                    try:
                        out.append((json.loads(header), json.loads(payload)))
                    except ValueError:
                        out.append((json.loads(header), payload))
        return out

    def wait_for(self, what, timeout: float = 10.0) -> list:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            sentry_sdk.flush(timeout=1)
            found = [item for item in self.items() if what(*item)]
            if found:
                return found
            time.sleep(0.05)
        raise AssertionError(f"no matching envelope item; received: {self.items()}")

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def envelopes() -> Iterator[Envelopes]:
    receiver = Envelopes()
    yield receiver
    sentry_sdk.flush(timeout=2)
    sentry_sdk.get_client().close()
    sentry_sdk.get_global_scope().set_client(None)  # back to the inactive client
    receiver.close()


@pytest.fixture
def tracked(settings, envelopes):
    """Settings with the DSN of the local receiver."""
    return settings.replace(sentry_dsn=envelopes.dsn, sentry_environment="test")


def is_error(kind: str):
    def match(header, payload) -> bool:
        return header.get("type") == "event" and isinstance(payload, dict) and any(
            v.get("type") == kind for v in payload.get("exception", {}).get("values", []))
    return match


def test_unhandled_request_error_arrives_scrubbed(tracked, envelopes):
    app = create_app({"SETTINGS": tracked, "TESTING": True})

    @app.get("/test-only/boom")
    def boom():
        from flask import request

        credentials = request.headers["Authorization"]  # a frame variable holding the token
        raise ZeroDivisionError(f"failed for {credentials} at {request.url}")

    token = make_token(JWT_SECRET, 42, True, 600)
    response = app.test_client().get(f"/test-only/boom?password={PASSWORD}",
                                     headers={"Authorization": f"Bearer {token}",
                                              "Cookie": f"session={PASSWORD}"})
    assert response.status_code == 500 and response.get_json()["code"] == "internal_error"
    [(_, event)] = envelopes.wait_for(is_error("ZeroDivisionError"))
    assert event["environment"] == "test" and event["tags"]["component"] == "web"
    assert "headers" not in event.get("request", {})
    everything = "\n".join(envelopes.bodies)
    assert token not in everything and PASSWORD not in everything
    assert "Bearer" not in everything
    app.extensions["hc"].close()


def test_failed_job_and_scheduled_checkins_arrive(tracked, envelopes, redis_url):
    init_error_tracking(tracked, "worker")
    token = make_token(JWT_SECRET, 7, False, 600)
    conn = redis.Redis.from_url(redis_url)
    queue = Queue(f"{tracked.key_prefix}sentry-{uuid.uuid4().hex[:6]}", connection=conn)
    queue.enqueue("tests.support.job_fixtures.boom", f"job failed with {token}")
    SimpleWorker([queue], connection=conn).work(burst=True)
    [(_, event)] = envelopes.wait_for(is_error("RuntimeError"))
    assert event["tags"]["component"] == "worker"
    assert token not in "\n".join(envelopes.bodies)
    queue.delete(delete_jobs=True)
    conn.close()

    app = create_app({"SETTINGS": tracked, "TESTING": True})
    state = app.extensions["hc"]

    def failing(_state) -> None:
        raise RuntimeError("scheduled job failed")

    assert run_once(state, Periodic("hc-test-ok", 60, lambda _s: None))
    assert run_once(state, Periodic("hc-test-failing", 600, failing))  # logged, not raised

    def checkin(slug: str, status: str):
        return lambda h, p: (h.get("type") == "check_in" and isinstance(p, dict)
                             and p.get("monitor_slug") == slug and p.get("status") == status)

    [(_, ok)] = envelopes.wait_for(checkin("hc-test-ok", "ok"))
    assert ok["monitor_config"]["schedule"] == {"type": "interval", "value": 1, "unit": "minute"}
    [(_, failed)] = envelopes.wait_for(checkin("hc-test-failing", "error"))
    assert failed["monitor_config"]["schedule"]["value"] == 10
    envelopes.wait_for(is_error("RuntimeError"))
    assert run_once(state, Periodic("hc-test-cron", 0, lambda _s: None, cron="0 2 * * *"))
    [(_, cron)] = envelopes.wait_for(checkin("hc-test-cron", "ok"))
    assert cron["monitor_config"]["schedule"] == {"type": "crontab", "value": "0 2 * * *"}
    app.extensions["hc"].close()


def test_without_a_dsn_nothing_is_set_up(settings):
    assert init_error_tracking(settings, "web") is False
    assert not sentry_sdk.get_client().is_active()
