"""Indexes as the models declare them: repair INVALID ones → build missing ones → report unused and duplicates.

Runs under the ``db-maintenance`` lock (DDL and backups share it). Every build is CONCURRENTLY (the
partitioned ``order_items``: ON ONLY + per partition + ATTACH), so writers keep writing meanwhile;
``db.indexes.ensure`` has the how and why. Killed midway, the next run completes it. Also callable from a
notebook: ``ensure_indexes(dry_run=True)``.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from db.connection import connection
from db.indexes import ensure as db_indexes
from flows import runtime
from flows.hub_status import publish_quietly
from flows.locks import job_lock
from flows.params import LockWait
from flows.reporting import logger, table_artifact
from flows.retrying import RETRIES
from flows.run_names import run_name

__all__ = ["IndexMaintenanceError", "ensure_indexes"]

IndexMaintenanceError = db_indexes.IndexMaintenanceError


@task(name="repair-invalid-indexes", cache_policy=NO_CACHE, **RETRIES)
def repair_invalid_indexes(dry_run: bool) -> list[dict[str, Any]]:
    hub = runtime.hub()
    with connection(hub.url, hub.schema, autocommit=True) as conn:
        return db_indexes.repair_invalid(conn, hub.schema, dry_run=dry_run).actions


@task(name="build-missing-indexes", cache_policy=NO_CACHE, **RETRIES)
def build_missing_indexes(dry_run: bool) -> list[dict[str, Any]]:
    hub = runtime.hub()
    with connection(hub.url, hub.schema, autocommit=True) as conn:
        return db_indexes.build_missing(conn, hub.schema, dry_run=dry_run).actions


@task(name="survey-indexes", cache_policy=NO_CACHE, **RETRIES)
def survey_indexes() -> db_indexes.Report:
    hub = runtime.hub()
    with connection(hub.url, hub.schema, autocommit=True) as conn:
        return db_indexes.survey(conn, hub.schema)


@flow(name="ensure-indexes", flow_run_name=run_name("indexes"))
def ensure_indexes(dry_run: bool = False, lock_wait: LockWait = 0) -> dict[str, Any]:
    """Make the declared indexes present and valid without blocking writes; report unused and duplicates.

    A held lock raises ``LockHeld``. Returns the report's rows under ``actions``, ``unused``,
    ``duplicates``; raises ``IndexMaintenanceError`` (after the artifact) when an index could not be
    built or repaired.

    Args:
        dry_run: Only say what would be built or repaired.
        lock_wait: Seconds to wait for the db-maintenance lock (0: fail at once, null: wait forever).
    """
    with job_lock("db-maintenance", wait=lock_wait):
        actions = repair_invalid_indexes(dry_run) + build_missing_indexes(dry_run)
        report = survey_indexes()
    report.dry_run, report.actions = dry_run, actions
    out = _publish(report)
    if not dry_run:
        publish_quietly()
    return out


def _publish(report: db_indexes.Report) -> dict[str, Any]:
    verb = "would change" if report.dry_run else "changed"
    logger().info(
        "indexes: %s %d (%s); %d unused, %d duplicate groups",
        verb,
        len(report.actions),
        ", ".join(f"{a['action']} {a['index']}" for a in report.actions) or "nothing to do",
        len(report.unused),
        len(report.duplicates),
    )
    table_artifact(
        report.rows() or [{"action": "none", "index": "", "table": "", "detail": "every declared index is valid"}],
        key="ensure-indexes",
        description="Indexes built, repaired, unused and duplicate" + (" (dry run: nothing changed)" * report.dry_run),
    )
    out = {
        "dry_run": report.dry_run,
        "actions": report.actions,
        "unused": report.unused,
        "unused_note": report.unused_note,
        "duplicates": report.duplicates,
    }
    if report.failed:
        raise IndexMaintenanceError(
            "could not build or repair: "
            + "; ".join(f"{a['index']} ({a['detail']})" for a in report.failed)
            + ". Fix the cause (e.g. duplicate rows under a UNIQUE index) or drop the index,"
            " then run `hub indexes` again."
        )
    return out
