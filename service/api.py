"""flask-smorest's ``Api``, adjusted to our contract: errors in the API.md format (400, not
422, for validation), ``Allow`` kept on 405, bearer auth in the OpenAPI document; and its
``Blueprint``, with an arguments parser that builds each schema once.

Every section's blueprint is ``service.api.Blueprint``: webargs instantiates a schema
*class* on every request it parses (declared fields copied, hooks resolved), a tenth of
a warm read's CPU before the handler ran (issue 15's profile). Our argument schemas keep
no per-load state, so one instance per class serves every request and thread.
"""

from __future__ import annotations

from typing import Any

import marshmallow as ma
from flask_smorest import Api as _Api
from flask_smorest import Blueprint as _Blueprint
from webargs.flaskparser import FlaskParser

from service.auth import MAX_ID
from service.errors import http_error_response
from service.fields import IdConverter
from service.schemas import ErrorSchema


class SchemaOnceParser(FlaskParser):
    """``FlaskParser`` that parses with one shared instance of each schema class."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._instances: dict[type, ma.Schema] = {}

    def parse(self, argmap: Any, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        if isinstance(argmap, type) and issubclass(argmap, ma.Schema):
            instance = self._instances.get(argmap)
            if instance is None:
                instance = self._instances.setdefault(argmap, argmap())
            argmap = instance
        return super().parse(argmap, *args, **kwargs)


class Blueprint(_Blueprint):
    ARGUMENTS_PARSER = SchemaOnceParser()


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
