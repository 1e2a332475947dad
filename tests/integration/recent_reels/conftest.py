"""Fixtures of the recently viewed reels tests."""

from __future__ import annotations

import pytest

from tests.support.recent_reels import FakeClock


@pytest.fixture
def clock(monkeypatch) -> FakeClock:
    """The view clock of ``service/recent_reels.py``, under the test's control."""
    fake = FakeClock()
    monkeypatch.setattr("service.recent_reels.now_ms", fake)
    return fake
