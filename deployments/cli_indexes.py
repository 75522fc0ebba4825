"""``hub indexes [--dry-run]``: build missing declared indexes, repair INVALID ones, writes going on."""

from __future__ import annotations

import typer

from deployments.options import fail, quiet_prefect

# What a dry run's actions would be, in words (the report's action names are past tense: what was done).
WOULD = {
    "built": "would build",
    "built-partition": "would build the partition index",
    "repaired": "would repair",
    "created-parent": "would create the parent index",
    "attached": "would attach",
    "dropped-leftover": "would drop the leftover",
}


def indexes(
    dry_run: bool = typer.Option(False, "--dry-run", help="Only say what would be built or repaired."),
    wait: float = typer.Option(
        0.0,
        "--wait",
        metavar="SECONDS",
        help="Wait up to SECONDS for the db-maintenance lock; without it a held lock exits with code 75.",
    ),
) -> None:
    """Make the indexes the models declare present and valid (CONCURRENTLY: writes go on), and list
    unused and duplicate indexes."""
    quiet_prefect()
    from flows.indexes import IndexMaintenanceError, ensure_indexes
    from flows.locks import LockHeld

    try:
        out = ensure_indexes(dry_run=dry_run, lock_wait=wait)
    except IndexMaintenanceError as exc:
        fail(str(exc))
    except LockHeld as exc:
        fail(str(exc), exc.exit_code)
    for a in out["actions"]:  # plain lines: index names stay whole in a narrow terminal
        verb = WOULD.get(a["action"], f"would: {a['action']}") if dry_run else a["action"]
        print(f"{verb} {a['index']} on {a['table']}: {a['detail']}")
    if not out["actions"]:
        print("every declared index is present and valid; nothing to do")
    if out.get("unused_note"):
        print(out["unused_note"])
    for u in out["unused"]:
        print(f"unused (never scanned since the statistics were reset): {u['index']} on {u['table']}, {u['size']}")
    for d in out["duplicates"]:
        print(f"duplicate on {d['table']}: {', '.join(d['indexes'])} ({d['key']})")
    if dry_run:
        print("dry run: nothing was changed")
