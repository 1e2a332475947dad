"""Engine and sessions. A pool with a hard cap and a short wait: past it, callers get
``DatabaseBusy`` (the service answers 503 + Retry-After) instead of queueing forever.

Every SQL statement sent is counted in ``db_queries_total`` (scripts/bench divides it by
the requests served to report SQL queries per request)."""

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

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session that rolls back unless the caller committed."""
        session = self.sessions()
        try:
            yield session
        finally:
            session.close()

    def ping(self) -> bool:
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            return True
        except Exception:  # noqa: BLE001 - readiness reports any failure as "down"
            return False

    def dispose(self) -> None:
        self.engine.dispose()
