"""The route layer's accessor of the app's dependencies (the ``AppState``).

Only HTTP routes (modules with a ``Blueprint``) and CLI commands call ``state()``: they
read the ``AppState`` of the current Flask app and pass it to the use cases, which take
it as a parameter and never import this module or Flask (``tests/unit/test_layering.py``
checks both).
"""

from __future__ import annotations

from flask import current_app

from service.bootstrap import AppState


def state() -> AppState:
    """The current app's ``AppState`` (needs an app context: a request or a CLI command)."""
    return current_app.extensions["hc"]
