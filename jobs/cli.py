"""The commands that run jobs: ``flask --app service worker | scheduler | rebuild-cache |
reconcile``. They are Flask CLI plugins (``flask.commands`` entry points in pyproject.toml)
rather than ``app.cli`` commands, so the web app never imports the jobs package; each runs
in the app's context. ``scripts/rebuild-cache`` runs ``rebuild-cache``; see
docs/operations.md."""

from __future__ import annotations

import click
from flask.cli import with_appcontext
from rq import Worker
from tqdm import tqdm

from jobs.context import use_state
from jobs.paths import READ_PATHS
from jobs.rebuild import Options, run
from jobs.reconcile import reconcile
from jobs.scheduler import run_forever
from service.error_tracking import init_error_tracking
from service.fields import MAX_ID
from service.state import state

PATH_CHOICE = click.Choice(sorted(READ_PATHS))


@click.command("worker")
@with_appcontext
@click.option("--burst", is_flag=True, help="Exit when the queues are empty.")
def worker(burst: bool) -> None:
    """Run an RQ worker on the service's queues (default, warm)."""
    app_state = state()
    init_error_tracking(app_state.settings, "worker")
    use_state(app_state)
    Worker(app_state.queues(), connection=app_state.queue_redis).work(
        burst=burst, with_scheduler=True
    )


@click.command("scheduler")
@with_appcontext
def scheduler() -> None:
    """Run periodic jobs (outbox relay, retention, reconciliation) until stopped."""
    init_error_tracking(state().settings, "scheduler")
    run_forever(state())


@click.command("rebuild-cache")
@with_appcontext
@click.option("--path", "paths", type=PATH_CHOICE, multiple=True,
              help="Only this read path (repeatable). Default: all.")
@click.option("--user", type=click.IntRange(1, MAX_ID), help="Only this user.")
@click.option("--group", type=click.IntRange(1, MAX_ID),
              help="Only this group (group feed: live items and every member's state).")
@click.option("--dry-run", is_flag=True, help="Report what differs; write nothing.")
@click.option("--max-rate", type=click.FloatRange(0.1), default=None,
              help="At most this many users per second.")
@click.option("--restart", is_flag=True, help="Ignore the checkpoint of a stopped run.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def rebuild_cache(paths, user, group, dry_run, max_rate, restart, no_progress) -> None:
    """Rebuild cached read paths from Postgres (resumable after Ctrl-C)."""
    if user is not None and group is not None:
        raise click.UsageError("--user and --group are exclusive")
    options = Options(list(paths) or None, user, group, dry_run, max_rate, restart,
                      progress=not no_progress)
    report = run(state(), options, echo=tqdm.write if options.progress else click.echo)
    for name, n in report.users.items():
        line = f"{name}: {n} user(s)"
        if dry_run or report.differences.get(name):
            line += f", {report.differences.get(name, 0)} key(s) differ"
        click.echo(line)
    verb = "compared" if dry_run else "rebuilt"
    click.echo(f"{verb} {report.total_users} user(s) in {report.seconds:.1f} s "
               f"({report.rate:.1f} users/s)")
    if report.interrupted:
        raise click.ClickException("interrupted: run the same command again to resume")

@click.command("reconcile")
@with_appcontext
@click.option("--all", "all_users", is_flag=True, help="Every user, not a sample.")
@click.option("--path", "paths", type=PATH_CHOICE, multiple=True,
              help="Only this read path (repeatable). Default: all.")
@click.option("--sample", type=click.IntRange(1), default=None,
              help="Users per path (default RECONCILE_SAMPLE).")
def reconcile_command(all_users, paths, sample) -> None:
    """Compare cached counts and lists with Postgres; repair and report differences."""
    result = reconcile(state(), list(paths) or None, sample, all_users)
    for diff in result.differences:
        click.echo(f"repaired {diff}")
    for name, n in result.checked.items():
        click.echo(f"{name}: checked {n}, repaired {result.repairs[name]}")
