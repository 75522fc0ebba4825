"""Snapshot import flows: an entity through a Shoptet snapshot, or a local snapshot file.

Every flow here is also a plain function a notebook can call (``import_snapshot("orders")``). The
steps are the tasks of ``flows/snapshot_tasks.py``.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from prefect import flow

from flows.entities import Entity
from flows.locks import job_lock
from flows.params import EntityName, LockWait, OptionalText, OptionalTime
from flows.runs import RunFailed, recorded_run
from flows.snapshot_tasks import (
    apply_snapshot,
    counters_table,
    downloaded,
    ensure_webhook,
    publish_counters,
    request_snapshot,
    snapshot_params,
    sweep_old_downloads,
    wait_for_job,
)

__all__ = ["SnapshotFailed", "counters_table", "import_file", "import_snapshot"]


class SnapshotFailed(RunFailed):
    """A snapshot failed after its retries; ``failed_snapshot_id`` names its ``failed_snapshots`` row."""


@flow(name="import-snapshot", flow_run_name="import-{entity.value}-snapshot", log_prints=True)
def import_snapshot(
    entity: EntityName,
    changed_since: OptionalTime = None,
    allow_mass_delete: bool = False,
    reuse_job_id: OptionalText = None,
    record_failure: bool = True,
    lock_wait: LockWait = 0,
) -> dict[str, Any]:
    """Import one entity through a Shoptet snapshot, holding the entity's job lock.

    A held lock raises ``LockHeld``.

    Args:
        entity: Which entity to import: orders, customers or products.
        changed_since: Unset: a full snapshot that makes the mirror equal to the shop (rows it no longer
            holds are deleted). Set: a filtered snapshot of what changed since then, which only upserts.
        allow_mass_delete: A full snapshot may delete over half of the mirrored rows (refused otherwise).
        reuse_job_id: Skip the request and download this Shoptet job's result again (the retry flow).
        record_failure: Record a failure in failed_snapshots for the hourly retry flow.
        lock_wait: Seconds to wait for the job lock when another job holds it (0: fail at once, null: wait forever).
    """
    entity = Entity(entity)
    full = changed_since is None
    params = snapshot_params(entity, changed_since)
    sweep_old_downloads()
    with (
        job_lock(entity.value, wait=lock_wait),
        recorded_run(
            entity,
            full=full,
            filters=_jsonable(params),
            what=f"{entity.value} snapshot",
            failure=SnapshotFailed,
            record_failed_snapshot_row=record_failure,
        ) as run,
    ):
        if reuse_job_id is None:
            ensure_webhook()
        job_id = reuse_job_id or request_snapshot(entity, params)
        run_id = run.start(source="api", job_id=job_id)
        job = wait_for_job(job_id, run_id)
        with downloaded(job) as path:
            counters = apply_snapshot(
                entity, path, run_id, full, as_of=job.creation_time, allow_mass_delete=allow_mass_delete
            )
    publish_counters(entity, counters)
    return counters


@flow(name="import-file", flow_run_name="import-{entity.value}-file")
def import_file(
    entity: EntityName, path: Path, full: bool = False, allow_mass_delete: bool = False, lock_wait: LockWait = 0
) -> dict[str, Any]:
    """Apply a local snapshot file through the same loader (no API needed), under the entity's lock.

    A refused file raises the loader's own error (``TooManyRejectsError``, ``MassDeleteRefusedError``).

    Args:
        entity: Which entity the file holds: orders, customers or products.
        path: The snapshot file (gzip or plain JSON Lines), as seen from the machine that runs the flow.
        full: The file is a full snapshot: delete mirrored rows it does not hold.
        allow_mass_delete: With full: allow deleting over half of the mirrored rows.
        lock_wait: Seconds to wait for the job lock when another job holds it (0: fail at once, null: wait forever).
    """
    entity = Entity(entity)
    path = Path(path)
    with (
        job_lock(entity.value, wait=lock_wait),
        recorded_run(
            entity, full=full, filters={"file": path.name}, what=f"{entity.value} file {path.name}", failure=None
        ) as run,
    ):
        run_id = run.start(source="file")
        counters = apply_snapshot(entity, path, run_id, full, allow_mass_delete=allow_mass_delete)
    publish_counters(entity, counters)
    return counters


def _jsonable(params: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in params.items()}
