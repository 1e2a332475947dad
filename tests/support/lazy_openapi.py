"""The OpenAPI document of a test app, built when it is first asked for.

``create_app`` documents every view as it registers a blueprint (flask-smorest's
``Blueprint.register_views_in_doc``: a deep copy of each view's doc, then apispec resolving
its marshmallow schemas). That was over half of the CPU time of ``create_app``, paid by every
test's app, while few tests read ``/openapi.json``. ``install()`` defers that step: each call
is kept on the app's ``APISpec`` and replayed, in order and with the same arguments, the
first time the spec renders (``APISpec.to_dict``, which ``/openapi.json`` and the
``flask openapi`` commands call). The document served is the one an eager build gives
(``tests/unit/test_lazy_openapi.py`` compares the two); the service itself is unchanged.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from functools import partial
from typing import Any

from apispec import APISpec
from flask_smorest import Blueprint

_PENDING = "_hc_pending_docs"
_lock = threading.Lock()
_installed: list[tuple[Callable[..., Any], Callable[..., Any]]] = []


def install() -> None:
    """Defer the documenting of views for every app made from now on (idempotent)."""
    if _installed:
        return
    eager_register = Blueprint.register_views_in_doc
    eager_to_dict = APISpec.to_dict

    def register_views_in_doc(self: Blueprint, api: Any, app: Any, spec: APISpec,
                              **kwargs: Any) -> None:
        with _lock:
            spec.__dict__.setdefault(_PENDING, []).append(
                partial(eager_register, self, api, app, spec, **kwargs))

    def to_dict(self: APISpec) -> dict[str, Any]:
        with _lock:  # two first requests for the document: one builds, the other waits
            for call in self.__dict__.pop(_PENDING, []):
                call()
        return eager_to_dict(self)

    Blueprint.register_views_in_doc = register_views_in_doc  # type: ignore[method-assign]
    APISpec.to_dict = to_dict  # type: ignore[method-assign]
    _installed.append((eager_register, eager_to_dict))


def uninstall() -> None:
    """Back to flask-smorest's eager documenting."""
    if _installed:
        eager_register, eager_to_dict = _installed.pop()
        Blueprint.register_views_in_doc = eager_register  # type: ignore[method-assign]
        APISpec.to_dict = eager_to_dict  # type: ignore[method-assign]
