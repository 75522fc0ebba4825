"""``hub backup``, ``hub backups list|verify|test-restore|prune`` and ``hub restore``."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

from deployments.options import fail, quiet_prefect

backups_app = typer.Typer(
    help="Backups: list, verify (full read), test-restore, prune (retention).", no_args_is_help=True
)

WAIT = typer.Option(
    0.0, "--wait", metavar="SECONDS", help="Wait up to SECONDS for the lock; without it a held lock exits with 75."
)


def _run(call, *args, **kw):
    """Run a flow or db call; every expected failure becomes one clear line and a non-zero exit."""
    from db.backups.manifest import BackupError
    from db.pg_tools import ToolMissing
    from flows.locks import LockHeld

    try:
        return call(*args, **kw)
    except LockHeld as exc:
        fail(str(exc), exc.exit_code)
    except (BackupError, ToolMissing, ValueError) as exc:
        fail(str(exc))


def backup_cmd(
    fmt: str = typer.Option("custom", "--format", help="custom (one file) or directory (allows --jobs)."),
    jobs: int = typer.Option(1, "--jobs", "-j", help="Parallel dump connections (directory format only)."),
    lock_wait_timeout: str = typer.Option(
        "60s", "--lock-wait-timeout", help="Fail if a table lock (e.g. held by DDL) is not granted within this."
    ),
    wait: float = WAIT,
) -> None:
    """Back up the hub's database now: pg_dump, verify (checksum + full read), copy off the machine if set."""
    quiet_prefect()
    from flows.backups import nightly_backup

    out = _run(nightly_backup, fmt=fmt, jobs=jobs, lock_wait=wait, lock_wait_timeout=lock_wait_timeout)
    m = out["manifest"]
    print(f"backup {out['backup']}: {m.size_bytes / 2**20:.2f} MB in {m.dump_seconds:.1f} s, verified")
    if out["copied_to"]:
        print(f"copied to {out['copied_to']} (checksum re-checked there)")


@backups_app.command("list")
def list_cmd() -> None:
    """Every backup in HUB_BACKUP_DIR: date, size, verified, restore-tested."""
    from db.backups import list_backups
    from flows.config import get_config

    directory = get_config().backup_path
    backups = list_backups(directory)
    if not backups:
        print(f"no backups in {directory}")
        return
    table = Table(title=f"backups in {directory}")
    for col in ("backup", "finished (UTC)", "size MB", "verified", "restore-tested", "restore s"):
        table.add_column(col)
    for path, m in reversed(backups):
        table.add_row(
            path.name,
            m.finished.strftime("%Y-%m-%d %H:%M:%S"),
            f"{m.size_bytes / 2**20:.2f}",
            _yes_no(m.verified),
            _yes_no(m.restore_tested),
            "" if m.restore_seconds is None else f"{m.restore_seconds:.1f}",
        )
    Console(width=140).print(table)


def _yes_no(v: bool | None) -> str:
    return "—" if v is None else ("yes" if v else "FAILED")


@backups_app.command("verify")
def verify_cmd(
    backup: str = typer.Argument(..., help="A backup's name in HUB_BACKUP_DIR, or its path there."),
    wait: float = WAIT,
) -> None:
    """Check a backup's SHA-256 and read it to the end (pg_restore -f /dev/null); exit 1 when damaged."""
    quiet_prefect()
    from flows.backups import verify_backup_file

    m = _run(verify_backup_file, backup, lock_wait=wait)
    print(f"{m.file}: ok (sha256 {m.sha256}, read to its end)")


@backups_app.command("test-restore")
def test_restore_cmd(
    backup: str = typer.Argument(None, help="Default: the newest verified backup."),
    jobs: int = typer.Option(2, "--jobs", "-j", help="Parallel pg_restore jobs."),
    wait: float = WAIT,
) -> None:
    """Restore into a scratch database, compare with the manifest, drop it; exit 1 on any difference."""
    quiet_prefect()
    from flows.backups import test_restore

    m = _run(test_restore, backup, jobs=jobs, lock_wait=wait)
    print(f"{m.file}: restored and checked in {m.restore_seconds:.1f} s (rows {sum(m.row_counts.values())})")


@backups_app.command("prune")
def prune_cmd(
    dry_run: bool = typer.Option(False, "--dry-run", help="Say what would be removed and how much; remove nothing."),
    wait: float = WAIT,
) -> None:
    """Remove backups older than 30 days; of each database the newest 7 verified and the newest restore-tested stay."""
    quiet_prefect()
    from flows.backups import prune_backups

    out = _run(prune_backups, dry_run=dry_run, lock_wait=wait)
    for d in out["decisions"]:
        print(f"  {d['decision']:6} {d['where']:5} {d['backup']} ({d['size_mb']} MB): {d['reason']}")
    print(("dry run: " if dry_run else "") + out["summary"])


def restore_cmd(
    backup: str = typer.Argument(..., help="A backup's path, or its name in HUB_BACKUP_DIR."),
    target_db: str = typer.Option(..., "--target-db", help="The database to restore into (same server)."),
    force: bool = typer.Option(False, "--force", help="Drop and replace TARGET_DB even if it holds tables."),
    replace_hub_database: bool = typer.Option(
        False, "--replace-hub-database", help="With --force: also replace Prefect's database or one holding a hub."
    ),
    jobs: int = typer.Option(2, "--jobs", "-j", help="Parallel pg_restore jobs."),
    wait: float = WAIT,
) -> None:
    """Restore BACKUP into TARGET_DB; a non-empty target is refused unless --force.

    Never the hub's own database; Prefect's, or one holding a hub's tables (an earlier restore), only
    with --replace-hub-database as well.
    """
    quiet_prefect()
    from flows.backups import restore_backup

    out = _run(
        restore_backup, backup, target_db, force=force, jobs=jobs, lock_wait=wait,
        replace_hub_database=replace_hub_database,
    )  # fmt: skip
    if out["replaced_tables"]:
        mb = out["replaced_bytes"] / 2**20
        print(f"dropped the previous {target_db}: {out['replaced_tables']} tables, {mb:.2f} MB")
    print(f"restored {out['backup']} into {target_db} in {out['seconds']:.1f} s")
    if out.get("erasures_reapplied"):
        print(f"re-applied {out['erasures_reapplied']} erasure(s) recorded since the backup: {out['erased_rows']}")
