"""Access to the app's dependencies from request code."""

from __future__ import annotations

from flask import current_app

from service.bootstrap import AppState


def state() -> AppState:
    return current_app.extensions["hc"]
