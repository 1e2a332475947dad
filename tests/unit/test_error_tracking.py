"""Error tracking's scrubber (service/error_tracking.py): no token, password or
Authorization header leaves in an event."""

from __future__ import annotations

import json

from service.auth import make_token
from service.error_tracking import scrub
from tests.support.auth import JWT_SECRET

PASSWORD = "hunter2-not-for-sentry"


def test_scrub_redacts_secrets_anywhere():
    token = make_token(JWT_SECRET, 1, False, 60)
    event = {
        "request": {"url": "http://x/api", "headers": {"Authorization": f"Bearer {token}"},
                    "query_string": f"ticket={PASSWORD}", "cookies": {"s": PASSWORD}},
        "extra": {"rq-job": {"args": [token], "kwargs": {"url": "postgresql://u:pw1@db/x"}}},
        "exception": {"values": [{"value": f"auth Bearer abc.def failed for {token}"}]},
    }
    out = json.dumps(scrub(event))
    assert token not in out and PASSWORD not in out and "pw1" not in out
    assert "Bearer abc" not in out and "postgresql://" in out
