"""The dependencies a job runs with.

RQ imports job functions by path in the worker process; they call ``get_state()``, which
bootstraps once per process from the environment (DATABASE_URL, REDIS_URL and JWT_SECRET
required), or returns what ``use_state`` set, as the web app and the tests do when they run
jobs in-process.
"""

from __future__ import annotations

import threading

from service.bootstrap import AppState, bootstrap
from service.settings import Settings

_state: AppState | None = None
_lock = threading.Lock()


def use_state(state: AppState | None) -> None:
    global _state
    _state = state


def get_state() -> AppState:
    global _state
    with _lock:
        if _state is None:
            _state = bootstrap(Settings.from_env().require_runtime())
        return _state
