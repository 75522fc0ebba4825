"""``hub migrate-partitions [--dry-run] [--split]``: partition a plain order_items online, then split it."""

from __future__ import annotations

import typer

from deployments.options import fail, quiet_prefect


def migrate_partitions(
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan; change nothing."),
    split: bool = typer.Option(
        False, "--split", help="Then move the legacy partition's rows into quarter partitions (resumable)."
    ),
    batch_size: int = typer.Option(2000, "--batch-size", min=100, help="Rows per copy batch of --split."),
    max_batches: int = typer.Option(
        0, "--max-batches", min=0, help="Stop the --split copy after N batches (0: run to the end); rerun to resume."
    ),
    pause: float = typer.Option(
        0.05, "--pause", min=0.0, metavar="SECONDS", help="Pause between copy batches (eases I/O for writers)."
    ),
    wait: float = typer.Option(
        0.0,
        "--wait",
        metavar="SECONDS",
        help="Wait up to SECONDS for the db-maintenance lock; without it a held lock exits with code 75.",
    ),
) -> None:
    """Make order_items partitioned while writers go on: the old table becomes one legacy partition
    (indexes built CONCURRENTLY, a range CHECK validated first, one short swap under lock_timeout)."""
    quiet_prefect()
    from flows.locks import LockHeld
    from flows.partition_migration import MigrationError
    from flows.partition_migration import migrate_partitions as flow

    try:
        out = flow(
            dry_run=dry_run,
            split=split,
            batch_size=batch_size,
            max_batches=max_batches or None,
            lock_wait=wait,
            pause=pause,
        )
    except MigrationError as exc:
        fail(str(exc))
    except LockHeld as exc:
        fail(str(exc), exc.exit_code)
    for line in out["plan"]:
        print(("dry run: " if dry_run else "") + line)
    for line in out["did"]:
        print(line)
    if dry_run:
        print("dry run: nothing was changed")
    elif not out["did"]:
        print("nothing to do")
