"""Commands on ``app.cli`` (``flask --app service <command>``): thin wrappers; the work is
in plain functions so tests call those.

``token`` is the exception: it is a Flask CLI plugin (the ``flask.commands`` entry point in
pyproject.toml), which Flask finds without loading the app, so it needs only JWT_SECRET and
no database or Redis. The commands that run jobs (``worker``, ``scheduler``,
``rebuild-cache``, ``reconcile``) are plugins too, in ``jobs/cli.py``: the web app never
imports the jobs package.
"""

from __future__ import annotations

from pathlib import Path

import click
from flask import Flask

from cache.keyspace_admin import clear_keyspace
from service import failed_jobs as failed
from service.activity_feed import init_cli as activity_feed_cli
from service.auth import make_token
from service.settings import DEV_SECRET_FILE, Settings
from service.state import state
from storage.demo import DemoSizes, has_data, seed
from storage.migrate import upgrade


@click.command("token")
@click.option("--user", "user_id", type=click.IntRange(1, 2**63 - 1), required=True)
@click.option("--admin", is_flag=True, help="Add role=admin.")
@click.option("--ttl", type=click.IntRange(1), default=24 * 3600, show_default=True)
def token(user_id: int, admin: bool, ttl: int) -> None:
    """Print a token for USER signed with JWT_SECRET, else with the development secret that
    `make run` keeps in $DATA_DIR/jwt-secret (needs no database)."""
    try:
        settings = Settings.from_env()
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    secret = settings.jwt_secret
    dev_file = Path(settings.data_dir) / DEV_SECRET_FILE
    if not secret and dev_file.exists():
        secret = dev_file.read_text().strip()
        click.echo(f"(signed with the development secret in {dev_file})", err=True)
    if not secret:
        raise click.ClickException(
            f"JWT_SECRET is not set and there is no {dev_file} (`make run` creates it)")
    click.echo(make_token(secret, user_id, admin, ttl))


def init_app(app: Flask) -> None:
    @app.cli.command("migrate")
    def migrate() -> None:
        """Apply database migrations (alembic upgrade head)."""
        upgrade(state().settings.database_url)
        click.echo("database at the newest schema")

    @app.cli.command("seed-demo")
    @click.option("--users", type=click.IntRange(1), default=200, show_default=True)
    @click.option("--groups", type=click.IntRange(1), default=10, show_default=True)
    @click.option("--items", type=click.IntRange(0), default=2_000, show_default=True)
    @click.option("--posts", type=click.IntRange(0), default=2_000, show_default=True)
    @click.option("--reels", type=click.IntRange(0), default=300, show_default=True)
    @click.option("--views", type=click.IntRange(0), default=10_000, show_default=True)
    @click.option("--seed", type=int, default=42, show_default=True)
    @click.option("--if-empty", is_flag=True, help="Do nothing if the database has data.")
    def seed_demo(**options) -> None:
        """Load demo data for every API section (bulk inserts)."""
        if_empty = options.pop("if_empty")
        with state().db.read() as session:
            if has_data(session):
                if if_empty:
                    click.echo("database already has data: demo seed skipped")
                    return
                # The demo's ids, dense positions and counters assume empty tables.
                raise click.ClickException(
                    "the database already has data: seed-demo loads into an empty database "
                    "only (use --if-empty to skip quietly, or a fresh DATA_DIR / database)")
        counts = seed(state().db, DemoSizes(**options), progress=True)
        click.echo("seeded: " + ", ".join(f"{k}={v}" for k, v in counts.items()))
        cleared = clear_keyspace(state().cache)
        click.echo(f"cleared {cleared} cache keys (rebuilt from Postgres on first read)")

    @app.cli.command("failed-jobs")
    @click.option("--requeue", "requeue_id", metavar="JOB_ID", help="Requeue one failed job.")
    @click.option("--requeue-all", is_flag=True, help="Requeue every failed job.")
    @click.option("--delete", "delete_id", metavar="JOB_ID", help="Delete one failed job.")
    @click.option("--delete-all", is_flag=True, help="Delete every failed job.")
    @click.option("--limit", type=click.IntRange(1), default=100, show_default=True)
    def failed_jobs(requeue_id, requeue_all, delete_id, delete_all, limit) -> None:
        """List failed jobs (default), or requeue / delete them."""
        queues = state().queues()
        if requeue_id or requeue_all:
            n = failed.requeue(queues, requeue_id)
            click.echo(f"requeued {n} job(s)")
            if requeue_id and not n:
                raise click.ClickException(f"no failed job {requeue_id}")
            return
        if delete_id or delete_all:
            n = failed.delete(queues, delete_id)
            click.echo(f"deleted {n} job(s)")
            if delete_id and not n:
                raise click.ClickException(f"no failed job {delete_id}")
            return
        jobs = failed.list_failed(queues, limit)
        for job in jobs:
            click.echo(f"{job.id}  {job.queue}  {job.func}  {job.ended_at}  {job.error}")
        click.echo(f"{len(jobs)} failed job(s)")

    activity_feed_cli(app)
