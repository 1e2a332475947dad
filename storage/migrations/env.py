"""Alembic environment: runs migrations online against ``sqlalchemy.url``."""

from alembic import context
from sqlalchemy import create_engine, pool

from storage.models import Base

config = context.config


def run_migrations_online() -> None:
    engine = create_engine(config.get_main_option("sqlalchemy.url"), poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=Base.metadata,
            compare_type=True,
        )
        with context.begin_transaction():
            # Two processes migrating at once (two releases) take turns.
            connection.exec_driver_sql("SELECT pg_advisory_xact_lock(7417001)")
            context.run_migrations()
    engine.dispose()


run_migrations_online()
