"""flask-smorest's ``Api``, adjusted to our contract: errors in the API.md format (400, not
422, for validation), ``Allow`` kept on 405, bearer auth in the OpenAPI document."""

from __future__ import annotations

from flask_smorest import Api as _Api

from service.auth import MAX_ID
from service.errors import http_error_response
from service.fields import IdConverter
from service.schemas import ErrorSchema


class Api(_Api):
    ERROR_SCHEMA = ErrorSchema

    def handle_http_exception(self, error):  # type: ignore[override]
        return http_error_response(error)


def make_api(app) -> Api:
    app.config.setdefault("API_TITLE", "Hybrid cache service")
    app.config.setdefault("API_VERSION", "1.0")
    app.config.setdefault("OPENAPI_VERSION", "3.0.3")
    app.config.setdefault("OPENAPI_URL_PREFIX", "/")
    app.config.setdefault("OPENAPI_JSON_PATH", "openapi.json")
    api = Api(app)
    api.spec.components.security_scheme(
        "bearerAuth", {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
    )
    # <id:name> path parameters are positive 64-bit integers, not strings.
    api.register_converter(
        IdConverter, lambda _: {"type": "integer", "minimum": 1, "maximum": MAX_ID}
    )
    return api
