"""Fixtures: real Postgres and real Redis, isolated per test.

Servers: ``TEST_DATABASE_URL`` / ``TEST_REDIS_URL`` when set, else embedded ones
(scripts/embedded.py) that this session starts, owns and stops. A test that runs pytest or
a script in a subprocess hands it these URLs; a test that breaks a server starts its own.
Isolation: a migrated template database is made once per session; each test gets its own
copy (``CREATE DATABASE ... TEMPLATE``) and its own Redis key prefix.
"""

from __future__ import annotations

import os
import shutil
import sys
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from cache.client import connect
from service import create_app
from service.settings import Settings
from tests.support import ROOT as PROJECT_ROOT
from tests.support.auth import JWT_SECRET, bearer  # noqa: F401 - fixtures use them
from tests.support.servers import server_dir

ROOT = PROJECT_ROOT
sys.path.insert(0, str(ROOT / "scripts"))  # `import embedded`: scripts/embedded.py, a dev tool



@pytest.fixture(scope="session")
def server_urls() -> Iterator[tuple[str, str]]:
    db_url = os.environ.get("TEST_DATABASE_URL", "")
    redis_url = os.environ.get("TEST_REDIS_URL", "")
    if db_url and redis_url:
        yield db_url, redis_url
        return
    import embedded

    data_dir = server_dir("hc-test-servers-")
    started: list[str] = []
    try:
        given = Settings(database_url=db_url, redis_url=redis_url, data_dir=str(data_dir))
        servers = embedded.ensure_servers(given, started=started)
        yield servers.database_url, servers.redis_url
    finally:
        embedded.stop_servers(data_dir, started)
        shutil.rmtree(data_dir, ignore_errors=True)


def _admin_engine(db_url: str):
    return create_engine(db_url, isolation_level="AUTOCOMMIT", pool_size=1, max_overflow=0)


@pytest.fixture(scope="session")
def template_db(server_urls) -> Iterator[str]:
    """A database at the newest migration, used as the template of every test database."""
    from storage.migrate import upgrade

    db_url, _ = server_urls
    name = f"hc_tpl_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    admin = _admin_engine(db_url)
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(db_url).set(database=name).render_as_string(hide_password=False)
    upgrade(url)
    yield name
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def database_url(server_urls, template_db) -> Iterator[str]:
    db_url, _ = server_urls
    name = f"hc_t_{uuid.uuid4().hex[:12]}"
    admin = _admin_engine(db_url)
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"'))
    yield make_url(db_url).set(database=name).render_as_string(hide_password=False)
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def redis_url(server_urls) -> str:
    return server_urls[1]


@pytest.fixture
def key_prefix(redis_url) -> Iterator[str]:
    prefix = f"t{uuid.uuid4().hex[:10]}:"
    yield prefix
    client = connect(redis_url, 2.0, 2.0)  # redis+cluster:// too (see tests/reliability)
    keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
    for i in range(0, len(keys), 500):
        client.delete(*keys[i : i + 500])
    client.close()


@pytest.fixture
def settings(database_url, redis_url, key_prefix) -> Settings:
    return Settings(
        database_url=database_url,
        redis_url=redis_url,
        rq_redis_url=os.environ.get("TEST_RQ_REDIS_URL", ""),  # needed with a cluster cache
        key_prefix=key_prefix,
        queue_prefix=key_prefix,
        jwt_secret=JWT_SECRET,
        db_pool_size=20,
        # Off here (tests make hundreds of requests a minute from one address);
        # tests/reliability/test_rate_limits.py turns them on.
        rate_limit_anonymous=0, rate_limit_user=0, rate_limit_fanout=0,
    )


@pytest.fixture
def app(settings):
    app = create_app({"SETTINGS": settings, "TESTING": True})
    yield app
    app.extensions["hc"].close()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def state(app):
    return app.extensions["hc"]


@pytest.fixture
def auth():
    """``auth(user_id, admin=False)`` -> request headers with a valid bearer token."""
    return bearer


@pytest.fixture
def admin_headers():
    return bearer(1, admin=True)
