"""The fixed cost cuts of issue 15 keep behaviour through the API: an expired token is
still refused, shared argument schemas parse each request on its own (the token memory
itself: tests/unit/test_tokens.py)."""

from __future__ import annotations

from service.auth import make_token
from tests.support.auth import JWT_SECRET


def test_expired_token_still_refused_through_the_api(client, auth):
    headers = auth(4)
    assert client.get("/api/events/activity-feed/summary/", headers=headers).status_code == 200
    expired = {"Authorization": f"Bearer {make_token(JWT_SECRET, 4, ttl=-1)}"}
    r = client.get("/api/events/activity-feed/summary/", headers=expired)
    assert r.status_code == 401
    assert r.get_json()["code"] == "token_expired"


def test_a_shared_query_schema_parses_each_request_on_its_own(client, auth, admin_headers):
    from tests.support.group_feed import make_group, unread

    group = make_group(client, admin_headers, members=[2])
    assert unread(client, auth(2), group) == 0
    assert unread(client, auth(2)) == {"groups": {str(group): 0}, "total": 0}
    bad = client.get("/api/v1/messaging/feed/unread-count/", query_string={"group": "x"},
                     headers=auth(2))
    assert bad.status_code == 400
    assert unread(client, auth(2), group) == 0
