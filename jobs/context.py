"""The dependencies a job runs with.

RQ imports job functions by path in the worker process; they call ``get_state()``, which
bootstraps once per process from the environment (or returns what ``use_state`` set, as
the web app and the tests do when they run jobs in-process).
"""

from __future__ import annotations

import threading

from service.bootstrap import AppState

_state: AppState | None = None
_lock = threading.Lock()


def use_state(state: AppState | None) -> None:
    global _state
    _state = state


def get_state() -> AppState:
    global _state
    with _lock:
        if _state is None:
            from service.bootstrap import bootstrap
            from service.settings import Settings

            settings = Settings.from_env()
            if not settings.database_url or not settings.redis_url:
                from service.embedded import ensure_servers

                settings = ensure_servers(settings)
            _state = bootstrap(settings)
        return _state
