"""Read sessions (``Database.read``) run in autocommit: no transaction is left open to
commit or roll back, so the statements psycopg prepares survive, and a read path that
repeats a query runs its prepared plan, not a new parse and plan per request. A ROLLBACK
(what ``Database.session`` ends with when nothing was committed) makes psycopg drop
them."""

from __future__ import annotations

import pytest
from psycopg.pq import TransactionStatus
from sqlalchemy import text

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


def test_a_read_opens_no_transaction(db):
    # No BEGIN before the statement and no COMMIT after it: the connection is idle, not
    # in a transaction, between the statements of a read and when it goes back.
    with db.read() as session:
        session.execute(text("SELECT 1")).scalar_one()
        raw = session.connection().connection.driver_connection
        assert raw.info.transaction_status == TransactionStatus.IDLE
        first, second = (session.execute(text(
            "SELECT statement_timestamp() = transaction_timestamp()")).scalar_one()
            for _ in range(2))
        assert first and second  # each statement its own transaction
    with db.session() as session:  # the contrast: a session's statements share one
        session.execute(text("SELECT 1"))
        assert not session.execute(text(
            "SELECT statement_timestamp() = transaction_timestamp()")).scalar_one()


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
            "WHERE statement LIKE 'SELECT ranked_candidates(%'")).scalars().all()
    assert names  # on the connection the pages used (the test client sends one at a time)
