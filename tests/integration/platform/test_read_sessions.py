"""Read sessions (``Database.read``) end with COMMIT, so the statements psycopg prepares
survive: a read path that repeats a query runs its prepared plan, not a new parse and
plan per request. A ROLLBACK (what ``Database.session`` ends with when nothing was
committed) makes psycopg drop them, and a write in a read session fails."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from storage.db import Database

PROBE = "SELECT count(*) FROM posts WHERE id > :floor"


def _prepared(db: Database) -> int:
    with db.read() as session:
        return session.execute(text(
            "SELECT count(*) FROM pg_prepared_statements WHERE statement LIKE :probe"),
            {"probe": "SELECT count(*) FROM posts WHERE id > %"}).scalar_one()


@pytest.fixture
def db(database_url):
    one = Database(database_url, pool_size=1)  # one connection: every session shares it
    yield one
    one.dispose()


def test_a_repeated_read_runs_prepared(db):
    for floor in range(8):
        with db.read() as session:
            assert session.execute(text(PROBE), {"floor": floor}).scalar_one() == 0
    assert _prepared(db) == 1


def test_sessions_that_roll_back_never_keep_a_prepared_statement(db):
    # Why reads do not use session(): psycopg forgets its prepared statements at each
    # ROLLBACK, so a query repeated in sessions that roll back is planned every time.
    for floor in range(8):
        with db.session() as session:
            session.execute(text(PROBE), {"floor": floor}).scalar_one()
    assert _prepared(db) == 0


def test_a_write_in_a_read_session_fails_and_keeps_nothing(db):
    with pytest.raises(DBAPIError, match="read-only transaction"), db.read() as session:
        session.execute(text("INSERT INTO collectives (id, name) VALUES (990001, 'x')"))
    with db.read() as session:
        assert session.execute(text(
            "SELECT count(*) FROM collectives WHERE id = 990001")).scalar_one() == 0


def test_the_personalized_pages_candidate_query_runs_prepared(state, client, auth):
    from tests.support.ranked_feed_data import generate

    viewer = generate(state, n_users=20, n_posts=60, n_collectives=3).users[0]
    for _ in range(8):
        r = client.get("/api/posts/", query_string={"invalidate_cache": "true"},
                       headers=auth(viewer))
        assert r.status_code == 200 and r.get_json()["results"]
    with state.db.read() as session:
        names = session.execute(text(
            "SELECT name FROM pg_prepared_statements "
            "WHERE statement LIKE 'SELECT coalesce(string_agg(int8send(r.id)%'")).scalars().all()
    assert names  # on the connection the pages used (the test client sends one at a time)
