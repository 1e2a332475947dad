"""Liveness and readiness."""

from __future__ import annotations

from flask import jsonify

from service.api import Blueprint
from service.schemas import ReadyOut, StatusOut
from service.state import state

bp = Blueprint("ops", __name__, description="Liveness and readiness")


@bp.route("/healthz", methods=["GET"])
@bp.response(200, StatusOut)
def healthz():
    """200 while the process serves."""
    return {"status": "ok"}


@bp.route("/readyz", methods=["GET"])
@bp.response(200, ReadyOut)
@bp.alt_response(503, description="A dependency is down")
def readyz():
    """200 when Postgres and Redis answer; 503 naming the one that does not."""
    app_state = state()
    checks = {
        "postgres": "ok" if app_state.db.ping() else "down",
        "redis": "ok" if app_state.cache.ping() else "down",
    }
    down = sorted(name for name, status in checks.items() if status != "ok")
    if not down:
        return {"status": "ok", **checks}
    response = jsonify(
        {
            "error": f"{', '.join(down)} unavailable",
            "code": "dependency_down",
            "details": checks,
        }
    )
    response.status_code = 503
    response.headers["Retry-After"] = "5"
    return response
