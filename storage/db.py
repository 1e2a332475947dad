"""Engine and sessions. A pool with a hard cap and a short wait: past it, callers get
``DatabaseBusy`` (the service answers 503 + Retry-After) instead of queueing forever.

Every SQL statement sent is counted in ``db_queries_total`` (scripts/bench divides it by
the requests served to report SQL queries per request).

Reads end with COMMIT, never ROLLBACK: psycopg prepares a statement from its fifth run on a
connection (``prepare_threshold``) and forgets every prepared statement of the connection at
each ROLLBACK (``Connection.rollback`` clears its cache and deallocates them). A read path
whose sessions rolled back therefore parsed and planned each of its queries anew at every
request (docs/libraries.md, psycopg row)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import Counter
from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

DB_QUERIES = Counter("db_queries_total", "SQL statements sent to Postgres")


def _count_query(conn, cursor, statement, parameters, context, executemany) -> None:
    DB_QUERIES.inc()


class Database:
    def __init__(self, url: str, pool_size: int = 10, pool_timeout: float = 2.0) -> None:
        self.engine: Engine = create_engine(
            url,
            pool_size=pool_size,
            max_overflow=0,
            pool_timeout=pool_timeout,
            pool_pre_ping=True,
            connect_args={"connect_timeout": 3},
        )
        event.listen(self.engine, "before_cursor_execute", _count_query)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        # The same pool; a connection handed to a reader begins READ ONLY transactions
        # (psycopg's ``read_only``, reset when the connection goes back to the pool).
        self.readers = sessionmaker(self.engine.execution_options(postgresql_readonly=True),
                                    expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session that rolls back unless the caller committed."""
        session = self.sessions()
        try:
            yield session
        finally:
            session.close()

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A session for reads: its transaction is READ ONLY (a write in it fails) and is
        committed when the block ends, so that the connection keeps the statements psycopg
        prepared (a ROLLBACK drops them). Left by an exception: rolled back. As with
        ``session()``, a connection is taken from the pool only once a statement runs."""
        session = self.readers()
        try:
            yield session
            # The reads are done; a READ ONLY transaction's COMMIT has nothing to keep,
            # so a connection lost now fails no caller (the pool drops it at close).
            with contextlib.suppress(DBAPIError):
                session.commit()
        finally:
            session.close()

    def ping(self) -> bool:
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
                conn.commit()  # not the pool's rollback: it would drop prepared statements
            return True
        except Exception:  # noqa: BLE001 - readiness reports any failure as "down"
            return False

    def dispose(self) -> None:
        self.engine.dispose()
