"""The fixed cost cuts of issue 15 keep behaviour: remembered tokens still expire, bad
tokens are never remembered, shared argument schemas parse each request on its own."""

from __future__ import annotations

import jwt
import pytest

from service.auth import Caller, TokenCache, make_token
from service.errors import Unauthorized
from tests.support.auth import JWT_SECRET


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_a_remembered_token_expires_at_its_exp():
    token = make_token(JWT_SECRET, 7, ttl=60)
    exp = jwt.decode(token, options={"verify_signature": False})["exp"]
    clock = Clock(exp - 30)
    tokens = TokenCache(clock=clock)
    assert tokens.decode(token, JWT_SECRET) == Caller(7)
    assert len(tokens) == 1
    clock.now = exp - 0.001
    assert tokens.decode(token, JWT_SECRET) == Caller(7)  # answered from memory
    clock.now = exp  # PyJWT: expired when exp <= now
    with pytest.raises(Unauthorized) as caught:
        tokens.decode(token, JWT_SECRET)
    assert caught.value.code == "token_expired"
    assert len(tokens) == 0


def test_refused_tokens_are_not_remembered_and_the_secret_is_part_of_the_key():
    tokens = TokenCache()
    good = make_token(JWT_SECRET, 3, admin=True)
    with pytest.raises(Unauthorized):
        tokens.decode(good, "another-secret-" + "y" * 20)
    with pytest.raises(Unauthorized):
        tokens.decode(make_token(JWT_SECRET, 3, ttl=-5), JWT_SECRET)
    with pytest.raises(Unauthorized):
        tokens.decode("not.a.token", JWT_SECRET)
    assert len(tokens) == 0
    assert tokens.decode(good, JWT_SECRET) == Caller(3, is_admin=True)
    with pytest.raises(Unauthorized):  # remembered under JWT_SECRET only
        tokens.decode(good, "another-secret-" + "y" * 20)


def test_token_memory_is_bounded():
    tokens = TokenCache(capacity=3)
    for user in range(1, 6):
        tokens.decode(make_token(JWT_SECRET, user), JWT_SECRET)
    assert len(tokens) == 3


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
