"""Bearer tokens without servers: the decoded-token memory (issue 15: remembered tokens
still expire, bad tokens are never remembered, memory is bounded) and the CLI's token
command."""

from __future__ import annotations

import jwt
import pytest
from click.testing import CliRunner

from service.auth import Caller, TokenCache, make_token
from service.cli import token as token_command
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


def test_cli_token_rejects_bad_user():
    result = CliRunner().invoke(token_command, ["--user", "0"], env={"JWT_SECRET": JWT_SECRET})
    assert result.exit_code != 0
