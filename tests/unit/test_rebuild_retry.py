"""The operator's rebuild tries a user once more when Redis fails, and stops on a second
failure (its checkpoint is saved by the caller)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from cache.client import CacheUnavailable
from jobs import rebuild


def flaky_path(failures: int) -> SimpleNamespace:
    calls: list[int] = []

    def rebuild_user(state, user_id: int) -> None:
        calls.append(user_id)
        if len(calls) <= failures:
            raise CacheUnavailable("ranked_feed")

    return SimpleNamespace(name="ranked_feed", rebuild=rebuild_user,
                           check=lambda state, user_id: [], calls=calls)


@pytest.fixture(autouse=True)
def no_pause(monkeypatch):
    monkeypatch.setattr(rebuild, "RETRY_PAUSE_S", 0)


def test_one_redis_failure_is_tried_again():
    path = flaky_path(failures=1)
    assert rebuild._work(path, dry_run=False)(None, 7) == []
    assert path.calls == [7, 7]


def test_a_second_failure_stops_the_run():
    path = flaky_path(failures=2)
    with pytest.raises(CacheUnavailable):
        rebuild._work(path, dry_run=False)(None, 7)
    assert path.calls == [7, 7]
