"""tests/support/lazy_openapi.py: a test app documents its views when its OpenAPI
document is first asked for, and serves the document an eager build serves."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from service import create_app
from service.settings import Settings
from tests.support import lazy_openapi
from tests.support.auth import JWT_SECRET

# Nothing connects while an app is built or its document is served.
SETTINGS = Settings(database_url="postgresql+psycopg://nobody@127.0.0.1:1/none",
                    redis_url="redis://127.0.0.1:1/0", jwt_secret=JWT_SECRET)


@pytest.fixture
def openapi_of() -> Iterator:
    """``openapi_of(lazy)`` -> (the paths an app has documented once built, the bytes of
    its /openapi.json asked for twice)."""
    was_installed = bool(lazy_openapi._installed)
    apps = []

    def build(lazy: bool):
        (lazy_openapi.install if lazy else lazy_openapi.uninstall)()
        app = create_app({"SETTINGS": SETTINGS, "TESTING": True})
        apps.append(app)
        spec = app.extensions["flask-smorest"]["apis"][""]["ext_obj"].spec
        documented = dict(spec._paths)
        client = app.test_client()
        responses = [client.get("/openapi.json") for _ in range(2)]
        assert [r.status_code for r in responses] == [200, 200]
        return documented, [r.data for r in responses]

    yield build
    for app in apps:
        app.extensions["hc"].close()
    (lazy_openapi.install if was_installed else lazy_openapi.uninstall)()


def test_the_document_is_built_on_first_request_and_matches_an_eager_build(openapi_of):
    eager_paths, eager_docs = openapi_of(lazy=False)
    lazy_paths, lazy_docs = openapi_of(lazy=True)
    assert len(eager_paths) > 20  # an eager app documents its views as it is built
    assert lazy_paths == {}  # a lazy one has not yet when it is built
    assert lazy_docs == eager_docs  # the same bytes, key order included, each time
    assert lazy_docs[0] == lazy_docs[1]
