"""Engine and sessions. A pool with a hard cap and a short wait: past it, callers get
``DatabaseBusy`` (the service answers 503 + Retry-After) instead of queueing forever.

Every SQL statement sent is counted in ``db_queries_total`` (scripts/bench divides it by
the requests served to report SQL queries per request).

Reads run in autocommit (``Database.read``): no BEGIN, no COMMIT, and never a ROLLBACK.
psycopg prepares a statement from its fifth run on a connection (``prepare_threshold``) and
forgets every prepared statement of the connection at each ROLLBACK (``Connection.rollback``
clears its cache and deallocates them), so read paths whose sessions rolled back parsed and
planned each of their queries anew at every request; and a read needs no transaction block
for its snapshot: under READ COMMITTED every statement takes its own anyway
(docs/libraries.md, psycopg row)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import Counter
from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Engine
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
        # The same pool; a connection handed to a reader is in autocommit until it goes
        # back (psycopg's ``autocommit``: set and reset without a round trip).
        self.readers = sessionmaker(self.engine.execution_options(isolation_level="AUTOCOMMIT"),
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
        """A session for reads, in autocommit: each statement is its own transaction, so a
        read costs its statements' round trips and no BEGIN or COMMIT, and the statements
        psycopg prepared stay prepared. Not for writes: a write here is committed at once
        (use ``session()`` or a unit of work). A block that needs one snapshot for several
        statements asks for it (``session.connection(execution_options={"isolation_level":
        "REPEATABLE READ"})`` inside ``session.begin()``). As with ``session()``, a
        connection is taken from the pool only once a statement runs."""
        session = self.readers()
        try:
            yield session
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
