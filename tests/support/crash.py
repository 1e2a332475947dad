"""A write that dies between its Postgres commit and its Redis apply."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


def _die(*args: Any, **kwargs: Any) -> None:
    raise SystemExit("died after the commit")


@contextmanager
def crash_after_commit(state: Any) -> Iterator[None]:
    """Within: every unit of work commits and then dies before touching Redis (the applier
    is the first thing to run after a commit)."""
    applier = state.applier
    applier.apply = _die
    try:
        yield
    finally:
        del applier.apply  # the class's method again
