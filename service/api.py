"""flask-smorest's ``Api``, adjusted to our contract: errors in the API.md format (400, not
422, for validation), ``Allow`` kept on 405, bearer auth in the OpenAPI document; and its
``Blueprint``, with an arguments parser that builds each schema once.

Every section's blueprint is ``service.api.Blueprint``: webargs instantiates a schema
*class* on every request it parses (declared fields copied, hooks resolved), a tenth of
a warm read's CPU before the handler ran. Our argument schemas keep no per-load state, so
one instance per class serves every request and thread; and a query schema's answer to
an empty query string is the same for every request, so it is loaded once.

``json_response`` is how the hot reads answer: the body the handler built, encoded once,
instead of a response schema's field-by-field dump (the schema stays the OpenAPI
contract, and tests check those bodies against it).
"""

from __future__ import annotations

import copy
import datetime
import threading
from collections import OrderedDict
from typing import Any

import marshmallow as ma
import orjson
from flask import Response, request
from flask_smorest import Api as _Api
from flask_smorest import Blueprint as _Blueprint
from webargs.flaskparser import FlaskParser

from service import JsonProvider
from service.auth import MAX_ID
from service.errors import http_error_response
from service.fields import IdConverter
from service.schemas import ErrorSchema

JSON_OPTIONS = JsonProvider.option  # encoded as ``jsonify`` encodes


def json_response(body: Any, status: int = 200) -> Response:
    """``body`` as the JSON response, encoded as the app's provider encodes it."""
    return Response(orjson.dumps(body, option=JSON_OPTIONS), status=status,
                    mimetype="application/json")


MEMO_QUERIES = 1024  # remembered query strings per (schema, options), for MEMO_QUERY schemas
_IMMUTABLE = (int, float, str, bytes, bool, type(None), datetime.datetime, datetime.date)


def _copy(value: Any) -> Any:
    """A parsed answer to hand out: a fresh dict when every value is immutable (a tuple of
    immutables included), else a deep copy."""
    if isinstance(value, dict) and all(
            isinstance(v, _IMMUTABLE) or (isinstance(v, tuple)
                                          and all(isinstance(x, _IMMUTABLE) for x in v))
            for v in value.values()):
        return dict(value)
    return copy.deepcopy(value)


class SchemaOnceParser(FlaskParser):
    """``FlaskParser`` that parses with one shared instance of each schema class, and
    loads each query schema's answer to an empty query string once.

    A query schema whose answer depends on nothing but the query string (no clock, no
    state: say so with ``MEMO_QUERY = True`` on the class) has its answers remembered per
    raw query string, the last ``MEMO_QUERIES`` of them: a client repeats the same query
    (``?page=1&per_page=20``), and webargs' parse of it was a tenth of a warm read's CPU.
    Only answers are remembered: a query that fails is parsed (and refused) each time.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._instances: dict[type, ma.Schema] = {}
        self._empty_query: dict[type, Any] = {}
        self._queries: dict[Any, OrderedDict[bytes, Any]] = {}
        self._lock = threading.Lock()

    def parse(self, argmap: Any, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        if isinstance(argmap, type) and issubclass(argmap, ma.Schema):
            schema_class = argmap
            instance = self._instances.get(argmap)
            if instance is None:
                instance = self._instances.setdefault(argmap, argmap())
            argmap = instance
            if kwargs.get("location") in ("query", "querystring") and not args:
                try:
                    key = (schema_class, *sorted((k, v) for k, v in kwargs.items()
                                                 if k != "req"))
                    hash(key)
                except TypeError:  # an unhashable option (error_headers): no memory
                    return super().parse(argmap, *args, **kwargs)
                query = request.query_string
                if not query:
                    # The same input every time (nothing), so the same output: the
                    # schema's defaults. A schema that refuses nothing (a required field)
                    # is parsed, so its 400 is raised as before; the answer is copied,
                    # never shared.
                    found = self._empty_query.get(key)
                    if found is None:
                        found = super().parse(argmap, *args, **kwargs)
                        self._empty_query[key] = found
                    return _copy(found)
                if getattr(schema_class, "MEMO_QUERY", False):
                    return self._remembered(key, query, argmap, args, kwargs)
        return super().parse(argmap, *args, **kwargs)

    def _remembered(self, key: Any, query: bytes, schema: ma.Schema, args: Any,
                    kwargs: Any) -> Any:
        memo = self._queries.get(key)
        if memo is None:
            memo = self._queries.setdefault(key, OrderedDict())
        with self._lock:
            found = memo.get(query)
            if found is not None:
                memo.move_to_end(query)
        if found is None:
            found = super().parse(schema, *args, **kwargs)  # raises: nothing remembered
            with self._lock:
                memo[query] = found
                while len(memo) > MEMO_QUERIES:
                    memo.popitem(last=False)
        return _copy(found)


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
