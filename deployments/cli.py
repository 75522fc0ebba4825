"""The ``hub`` command line (Typer). Thin: every command calls a flow or a db/ function."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import typer
from rich.console import Console

from deployments import ephemeral
from deployments.cli_backups import backup_cmd, backups_app, restore_cmd
from deployments.cli_fetch import fetch_changes_cmd, fetch_orders_cmd
from deployments.cli_forget import forget as forget_cmd
from deployments.cli_indexes import indexes as indexes_cmd
from deployments.cli_metrics import metrics as metrics_cmd
from deployments.cli_migrate_partitions import migrate_partitions as migrate_partitions_cmd
from deployments.cli_partitions import partitions_app
from deployments.cli_sandbox import sandbox_cmd
from deployments.cli_serve import bootstrap_cmd, deploy_cmd, serve_cmd
from deployments.cli_settings import settings_app
from deployments.cli_status import status_cmd
from deployments.options import fail, parse_when, quiet_prefect, run_failures_off_the_terminal
from flows.entities import Entity

app = typer.Typer(help="Shoptet Commerce Hub: mirror a Shoptet e-shop into PostgreSQL.", no_args_is_help=True)
db_app = typer.Typer(help="Database: URL, migrations and the embedded server.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(settings_app, name="settings")
app.command("metrics")(metrics_cmd)
app.command("status")(status_cmd)
app.add_typer(partitions_app, name="partitions")
app.command("backup")(backup_cmd)
app.add_typer(backups_app, name="backups")
app.command("restore")(restore_cmd)
console = Console(stderr=True, soft_wrap=True)  # messages are not cut at 80 columns (a log file)


WAIT_OPTION = typer.Option(
    0.0,
    "--wait",
    metavar="SECONDS",
    help="Wait up to SECONDS for the job's lock; without it a held lock exits at once with code 75.",
)


# --- db -----------------------------------------------------------------------------------------------


@db_app.command("url")
def db_url() -> None:
    """Print the database URL in use (password masked)."""
    from db.connection import mask_url
    from flows import runtime

    print(mask_url(runtime.database_url()))


@db_app.command("status")
def db_status() -> None:
    """Show the embedded PostgreSQL: running or not, data folder, pid, version, URL (exit code 3: not running)."""
    from db.connection import mask_url
    from db.embedded import EmbeddedServerError, embedded_status
    from flows.config import get_config

    cfg = get_config()
    if cfg.database_url is not None:
        print(f"database:  {mask_url(cfg.database_url.get_secret_value())} (HUB_DATABASE_URL; not embedded)")
    try:
        st = embedded_status(cfg.home)
    except EmbeddedServerError as exc:
        fail(str(exc))
    if st.running:
        since = st.started_at.astimezone().isoformat(timespec="seconds") if st.started_at else "?"
        state = f"running (pid {st.pid}, {st.state}, since {since}, as {st.owner})"
    else:
        state = "not running" if st.initialized else "not created yet (the first command that needs it creates it)"
    print(f"embedded:  {state}" + (" — unused while HUB_DATABASE_URL is set" if cfg.database_url else ""))
    print(f"data:      {st.pgdata}")
    if st.major_version:
        print(f"version:   PostgreSQL {_server_version(st.url) or st.major_version}")
    if st.url:
        print(f"url:       {mask_url(st.url)}")
    if not st.running and cfg.database_url is None:
        raise typer.Exit(3)  # as `pg_ctl status`: scripts can test it


def _server_version(url: str | None) -> str | None:
    if not url:
        return None
    import psycopg

    try:
        with psycopg.connect(url, connect_timeout=3) as conn:
            return conn.execute("SHOW server_version").fetchone()[0]
    except psycopg.Error:
        return None


@db_app.command("stop")
def db_stop(
    force: bool = typer.Option(False, "--force", help="Stop even with other sessions connected (they are cut off)."),
) -> None:
    """Stop the embedded PostgreSQL left running between commands (the next command starts it again)."""
    from db.embedded import EmbeddedServerError, embedded_status, pgdata_dir, stop_embedded_server
    from flows.config import get_config

    cfg = get_config()
    if cfg.database_url is not None:
        note = ""
        try:
            if embedded_status(cfg.home).running:
                note = f" (one is still running for {cfg.home}: unset HUB_DATABASE_URL to stop it)"
        except EmbeddedServerError:
            pass
        print(f"HUB_DATABASE_URL is set: there is no embedded server to stop{note}")
        return
    try:
        stopped = stop_embedded_server(cfg.home, force=force)
    except EmbeddedServerError as exc:
        fail(str(exc))
    if stopped is None:
        print(f"the embedded server is not running (data: {pgdata_dir(cfg.home)})")
    else:
        print(f"stopped the embedded server (pid {stopped.pid}, data: {stopped.pgdata})")


@db_app.command("upgrade")
def db_upgrade(revision: str = typer.Argument("head")) -> None:
    """Run migrations up to REVISION (default: head)."""
    from db import migrate
    from flows import runtime
    from flows.config import get_config

    cfg = get_config()
    migrate.upgrade(runtime.database_url(cfg), cfg.db_schema, revision)
    console.print(f"database at revision {migrate.current_revision(runtime.database_url(cfg), cfg.db_schema)}")


@db_app.command("downgrade")
def db_downgrade(revision: str = typer.Argument("-1")) -> None:
    """Revert migrations down to REVISION (default: one step; 'base' removes every table)."""
    from db import migrate
    from flows import runtime
    from flows.config import get_config

    cfg = get_config()
    migrate.downgrade(runtime.database_url(cfg), cfg.db_schema, revision)
    console.print(f"database at revision {migrate.current_revision(runtime.database_url(cfg), cfg.db_schema)}")


# --- snapshot import ----------------------------------------------------------------------------------


@app.command()
def sync(
    entity: Entity,
    since: str | None = typer.Option(
        None, help="Only entities changed since this ISO 8601 time (UTC if no offset); omit for a full snapshot."
    ),
    allow_mass_delete: bool = typer.Option(False, help="Let a full snapshot delete over half of the rows."),
    wait: float = WAIT_OPTION,
) -> None:
    """Import ENTITY from the shop through a Shoptet snapshot."""
    quiet_prefect()
    ephemeral.start()  # before the imports: the server starts while they run
    from flows.locks import LockHeld
    from flows.snapshot import SnapshotFailed, counters_table, import_snapshot

    ephemeral.wait_ready(console)
    changed_since = parse_when(since, "--since")
    try:
        with run_failures_off_the_terminal():
            counters = import_snapshot(
                entity, changed_since=changed_since, allow_mass_delete=allow_mass_delete, lock_wait=wait
            )
    except LockHeld as exc:
        fail(str(exc), exc.exit_code)
    except SnapshotFailed as exc:
        fail(f"{exc} (recorded as failed snapshot {exc.failed_snapshot_id}; `hub retry-failed` retries it)")
    _print_counters(entity.value, counters_table(counters))


@app.command("import-file")
def import_file_cmd(
    entity: Entity,
    file: Path = typer.Argument(..., exists=True, dir_okay=False, readable=True),
    full: bool = typer.Option(False, help="The file is a full snapshot: delete rows it does not hold."),
    allow_mass_delete: bool = typer.Option(False, help="With --full: allow deleting over half of the rows."),
    wait: float = WAIT_OPTION,
) -> None:
    """Apply a local snapshot FILE (gzip or plain JSON Lines) through the same loader."""
    quiet_prefect()
    ephemeral.start()
    from db.loader import ApplyError
    from flows.locks import LockHeld
    from flows.snapshot import counters_table, import_file

    ephemeral.wait_ready(console)
    try:
        with run_failures_off_the_terminal():
            counters = import_file(entity, file, full=full, allow_mass_delete=allow_mass_delete, lock_wait=wait)
    except LockHeld as exc:
        fail(str(exc), exc.exit_code)
    except ApplyError as exc:
        fail(str(exc))
    except Exception as exc:  # noqa: BLE001 - the CLI reports every failure with its reason
        fail(f"{type(exc).__name__}: {exc}")
    _print_counters(entity.value, counters_table(counters))


@app.command("retry-failed")
def retry_failed(wait: float = WAIT_OPTION) -> None:
    """Retry due failed snapshots (3 attempts each, then gave_up)."""
    quiet_prefect()
    ephemeral.start()
    from flows.failed import retry_failed_snapshots
    from flows.locks import LockHeld

    ephemeral.wait_ready(console)
    try:
        outcomes = retry_failed_snapshots(lock_wait=wait)
    except LockHeld as exc:
        fail(str(exc), exc.exit_code)
    if not outcomes:
        console.print("no failed snapshots due")
    for o in outcomes:
        console.print(f"failed snapshot {o['id']} ({o['entity']}): attempt {o['attempt']} → {o['status']}")
    if any(o["status"] != "recovered" for o in outcomes):
        raise typer.Exit(1)


app.command("fetch-orders")(fetch_orders_cmd)
app.command("fetch-changes")(fetch_changes_cmd)
app.command("forget")(forget_cmd)
app.command("indexes")(indexes_cmd)
app.command("migrate-partitions")(migrate_partitions_cmd)


def _print_counters(entity: str, rows: list[dict]) -> None:
    from rich.table import Table

    table = Table(title=f"{entity} snapshot")
    table.add_column("counter")
    table.add_column("value", justify="right")
    for r in rows:
        table.add_row(r["counter"], str(r["value"]))
    Console().print(table)


# --- bootstrap and locks -----------------------------------------------------------------------------

locks_app = typer.Typer(help="Job locks: list them, free a slot left by a crashed holder.", invoke_without_command=True)
app.add_typer(locks_app, name="locks")


app.command("bootstrap")(bootstrap_cmd)
app.command("deploy")(deploy_cmd)
app.command("serve")(serve_cmd)


@locks_app.callback()
def locks_list(ctx: typer.Context) -> None:
    """List this hub instance's locks: exists, active, slots in use, holder."""
    if ctx.invoked_subcommand is not None:
        return
    from rich.table import Table

    from flows import runtime
    from flows.config import get_config
    from flows.lock_view import instance, lock_table

    cfg = get_config()
    url = runtime.database_url(cfg)
    runtime.ensure_schema(url, cfg.db_schema)
    table = Table(title=f"job locks of hub instance {instance(url, cfg.db_schema)}")
    rows = lock_table(url, cfg.db_schema)
    for col in rows[0]:
        table.add_column(col)
    for r in rows:
        table.add_row(*("" if v is None else str(v) for v in r.values()))
    Console(width=140).print(table)


@locks_app.command("release")
def locks_release(
    name: str = typer.Argument(..., help="Lock group (orders, …) or limit name (hub-<instance>-orders)."),
) -> None:
    """Free a slot left by a crashed holder (revoking its Prefect lease); refuses while the holder is alive."""
    from flows import runtime
    from flows.config import get_config
    from flows.locks import LockError, LockHeld, release

    cfg = get_config()
    url = runtime.database_url(cfg)
    try:
        released = release(url, cfg.db_schema, name)
    except LockHeld as exc:
        fail(f"refusing to release: {exc}", exc.exit_code)
    except (LockError, ValueError) as exc:
        fail(str(exc))
    console.print(f"released {released.describe()}")


# --- sandbox and generated data -----------------------------------------------------------------------


app.command("sandbox")(sandbox_cmd)


@app.command()
def generate(
    entity: Entity,
    count: int = typer.Option(..., help="How many entities."),
    out: Path = typer.Option(..., help="Output file (gzip JSON Lines)."),
    seed: int = typer.Option(42),
) -> None:
    """Write a deterministic gzip snapshot file of COUNT entities (for benchmarks)."""
    from shoptet.sandbox.generator import write_snapshot

    n = write_snapshot(entity.value, count, out, seed=seed)
    console.print(f"wrote {n} {entity.value} to {out}")


@app.command()
def demo(
    orders: int = typer.Option(20_000, help="Orders in the sandbox shop."),
    seed: int = typer.Option(42),
    verbose: bool = typer.Option(False, help="Show Prefect's logs."),
) -> None:
    """Run the whole pipeline on embedded defaults: embedded PostgreSQL + sandbox API + ephemeral Prefect."""
    if not verbose:
        quiet_prefect()
    ephemeral.start()
    from deployments.demo import run_demo

    sys.exit(run_demo(orders=orders, seed=seed))


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:  # the loggers log INFO (for the Prefect API), the terminal not
        handler.setLevel(max(handler.level, logging.WARNING))
    # Every command, also those that only talk to a Prefect server (`hub locks`): without this, the
    # ephemeral server's telemetry heartbeat fails on its SQLite ("database is locked") in the terminal.
    quiet_prefect()
    _use_running_server()
    app()


def _use_running_server() -> None:
    """Flows of every command run on the server PREFECT_API_URL names or `hub serve` runs, when one is up
    (they show in its UI, and no throwaway server is started: seconds saved per command)."""
    from deployments.prefect_server import use_running_server
    from flows.config import get_config

    try:
        home = get_config().home
    except ValueError:  # a bad HUB_* value: the command itself reports it
        return
    use_running_server(home)


if __name__ == "__main__":
    main()
