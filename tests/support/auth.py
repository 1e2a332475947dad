"""Tokens for tests: the suite's JWT secret and bearer headers signed with it."""

from __future__ import annotations

from service.auth import make_token

JWT_SECRET = "test-secret-" + "x" * 20


def bearer(user_id: int, admin: bool = False, ttl: int = 3600) -> dict[str, str]:
    return {"Authorization": f"Bearer {make_token(JWT_SECRET, user_id, admin, ttl)}"}
