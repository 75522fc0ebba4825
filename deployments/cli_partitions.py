"""``hub partitions [--dry-run]`` and ``hub partitions restore-archive FILE``."""

from __future__ import annotations

from pathlib import Path

import typer

from deployments.options import fail, quiet_prefect

partitions_app = typer.Typer(
    help="order_items partitions: rollover, retention (archive, then drop), restore.", invoke_without_command=True
)

WAIT = typer.Option(
    0.0, "--wait", metavar="SECONDS", help="Wait up to SECONDS for the locks; without it a held lock exits with 75."
)


@partitions_app.callback()
def partitions(
    ctx: typer.Context,
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan; change nothing."),
    wait: float = WAIT,
) -> None:
    """Create the runway and data quarters; archive (pg_dump, verified) and drop quarters past retention."""
    if ctx.invoked_subcommand is not None:
        return
    quiet_prefect()
    from db.partitions.archive import ArchiveError
    from flows.locks import LockHeld
    from flows.partitions import partition_maintenance

    try:
        out = partition_maintenance(dry_run=dry_run, lock_wait=wait)
    except ArchiveError as exc:
        fail(str(exc))
    except LockHeld as exc:
        fail(str(exc), exc.exit_code)
    for line in out["plan"]:
        print(("dry run: " if dry_run else "") + line)
    if dry_run:
        print("dry run: nothing was changed")
        return
    print(f"created {len(out['created'])} partition(s); archived and dropped {len(out['archived'])}")
    for a in out["archived"]:
        print(f"  {a['partition']}: {a['rows']} rows → {a['file']}")


@partitions_app.command("restore-archive")
def restore_archive_cmd(
    file: Path = typer.Argument(..., help="The archive written by retention: its name or path in HUB_ARCHIVE_DIR."),
    wait: float = WAIT,
) -> None:
    """Verify the archive, load its quarter unattached, check its rows against the manifest, then attach it and
    lift the horizon (and mark the quarter's orders changed since the archive for a rewrite of their items)."""
    quiet_prefect()
    from db.partitions.archive import ArchiveError
    from flows.locks import LockHeld
    from flows.partitions import restore_partition_archive

    try:
        out = restore_partition_archive(file, lock_wait=wait)
    except ArchiveError as exc:
        fail(str(exc))
    except LockHeld as exc:
        fail(str(exc), exc.exit_code)
    print(f"restored {out['partition']}: {out['rows']} rows (checked against the manifest) from {out['file']}")
    print(
        f"{out['orders_invalidated']} orders changed while archived: the next orders snapshot rewrites their items; "
        f"{out['orphans_deleted']} restored items of orders that no longer exist deleted"
    )
