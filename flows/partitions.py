"""``order_items`` partitions that run themselves: rollover (runway + data quarters) and retention.

Reads like the plan it carries out: plan → create the missing quarters → for each quarter past the
retention horizon: archive (pg_dump + sha256 + manifest) → copy off the machine (HUB_BACKUP_COPY_DIR) →
verify, record, detach concurrently, drop → report. The SQL and the archive files are
``db/partitions/plan.py`` and ``db/partitions/archive.py``; partitions are created only through
``db/partitions/rollover.py``.

Locks: ``db-maintenance`` (DDL and backups share it) and ``orders``: between the dump and the drop no
import may write into the quarter being retired, or those rows would be dropped unarchived. A dry run
only reads and takes no lock. Also callable from a notebook: ``partition_maintenance(dry_run=True)``.
"""

from __future__ import annotations

from contextlib import nullcontext
from datetime import datetime
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from db.connection import connection
from db.dates import DateWindow
from db.partitions import archive as partition_archive
from db.partitions import restore, retire
from db.partitions import rollover as partitions
from db.partitions.plan import Plan, make_plan
from db.partitions.rollover import Quarter
from db.sealed import ARCHIVE, sweep
from db.sealed.copy import instance_dir
from db.sealed.names import OutsideFolder, confine
from db.settings.registry import get_settings_service
from flows import runtime
from flows.hub_status import publish_quietly
from flows.locks import instance, job_lock
from flows.params import LockWait, OptionalTime
from flows.reporting import logger, table_artifact
from flows.retrying import RETRIES
from flows.run_names import run_name

LOCK_GROUPS = ("orders", "db-maintenance")
LOCK_TIMEOUT = "5s"


def _window(url: str, schema: str) -> DateWindow:
    rules = get_settings_service(url, schema)
    return DateWindow.of(rules.get("dates_accepted_from"), rules.get("dates_accepted_ahead_days"))


@task(name="plan-partitions", cache_policy=NO_CACHE, **RETRIES)
def plan_partitions(now: datetime | None = None) -> Plan:
    hub = runtime.hub()
    rules = get_settings_service(hub.url, hub.schema)
    with connection(hub.url, hub.schema, autocommit=True) as conn:
        return make_plan(
            conn,
            now=now,
            runway_quarters=rules.get("partition_runway_quarters"),
            retention_years=rules.get("partition_retention_years"),
            window=_window(hub.url, hub.schema),
        )


@task(name="create-partitions", cache_policy=NO_CACHE, **RETRIES)
def create_partitions(quarters: list[Quarter]) -> list[str]:
    if not quarters:
        return []
    hub = runtime.hub()
    with connection(hub.url, hub.schema, autocommit=True) as conn:
        return partitions.ensure_partitions(
            conn, quarters, lock_timeout=LOCK_TIMEOUT, window=_window(hub.url, hub.schema)
        )


@task(name="sweep-archive-dir", cache_policy=NO_CACHE)
def sweep_archive_dir(now: datetime | None = None) -> list[str]:
    """Temporary files a killed archive run left in HUB_ARCHIVE_DIR (archive names only; archives are kept)."""
    gone = sweep.clean(runtime.hub().cfg.archive_path, ARCHIVE, now)
    for x in gone:
        logger().info("removed %s (%d bytes): %s", x.path.name, x.size_bytes, x.reason)
    return [x.path.name for x in gone]


@task(name="archive-partition", cache_policy=NO_CACHE, **RETRIES)
def archive_partition(quarter: Quarter) -> Path:
    hub = runtime.hub()
    with connection(hub.url, hub.schema, autocommit=True) as conn:
        return partition_archive.archive_partition(conn, hub.url, hub.schema, quarter, hub.cfg.archive_path)


@task(name="reconcile-archives", cache_policy=NO_CACHE, **RETRIES)
def reconcile_archives() -> list[str]:
    """What a killed earlier run left: a drop not recorded, a quarter detached but not dropped (L5)."""
    hub = runtime.hub()
    with connection(hub.url, hub.schema, autocommit=True) as conn:
        return retire.reconcile(conn, lock_timeout=LOCK_TIMEOUT)


@task(name="copy-archive", cache_policy=NO_CACHE, **RETRIES)
def copy_archive(dump: Path) -> str | None:
    """The archive into this hub's subfolder of HUB_BACKUP_COPY_DIR, checked there, before anything is dropped."""
    hub = runtime.hub()
    if hub.cfg.backup_copy_dir is None:
        return None
    root = hub.cfg.backup_copy_dir
    return str(partition_archive.copy_archive(dump, instance_dir(root, instance(hub.url, hub.schema))))


@task(name="retire-partition", cache_policy=NO_CACHE, **RETRIES)
def retire_partition(dump: Path) -> dict[str, Any]:
    """Verify the archive (a damaged one raises ArchiveDamaged: nothing is dropped), then detach and drop."""
    hub = runtime.hub()
    with connection(hub.url, hub.schema, autocommit=True) as conn:
        archive, _ = retire.retire_partition(conn, dump, lock_timeout=LOCK_TIMEOUT)
    return {"partition": archive.partition, "rows": archive.rows, "sha256": archive.sha256, "file": str(dump)}


@flow(name="partition-maintenance", flow_run_name=run_name("partitions-maintenance"), log_prints=True)
def partition_maintenance(dry_run: bool = False, lock_wait: LockWait = 0, now: OptionalTime = None) -> dict[str, Any]:
    """Make sure ``order_items`` has its runway and data quarters; archive and drop what is past retention.

    A held lock raises ``LockHeld``.

    Args:
        dry_run: Print the plan, change nothing (and take no lock).
        lock_wait: Seconds to wait for the locks when another job holds them (0: fail at once, null: forever).
        now: The clock (default: now; tests set it).
    """
    with nullcontext() if dry_run else job_lock(*LOCK_GROUPS, wait=lock_wait):
        repaired = [] if dry_run else reconcile_archives()
        plan = plan_partitions(now)
        for line in repaired:
            logger().info("repaired: %s", line)
        for line in plan.describe():
            logger().info("%s%s", "dry run: " if dry_run else "", line)
        if dry_run:
            return {"dry_run": True, "plan": plan.describe(), "created": [], "archived": []}
        sweep_archive_dir(now)
        created = create_partitions(plan.create)
        archived = []
        for q in plan.retire:
            dump = archive_partition(q)
            copied = copy_archive(dump)  # an archived quarter is the one part Shoptet cannot send again
            archived.append({**retire_partition(dump), "copied_to": copied})
    rows = partition_report(plan, archived)
    publish_quietly()
    return {
        "dry_run": False,
        "plan": plan.describe(),
        "repaired": repaired,
        "created": created,
        "archived": archived,
        "partitions": rows,
    }


def partition_report(plan: Plan, archived: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The table artifact: each partition (range, row estimate, size), the runway, what was archived where."""
    hub = runtime.hub()
    with connection(hub.url, hub.schema, autocommit=True) as conn:
        stats = partitions.partition_stats(conn)
    runway = {q.name for q in plan.runway}
    rows: list[dict[str, Any]] = [
        {
            "partition": s.name,
            "range": f"[{s.quarter.start:%Y-%m-%d}, {s.quarter.end:%Y-%m-%d})" if s.quarter else "?",
            "row_estimate": s.row_estimate,
            "size_mb": round(s.bytes / 2**20, 2),
            "state": "runway" if s.name in runway else ("detach pending" if s.detach_pending else "live"),
            "archive": "",
        }
        for s in stats
    ]
    missing = sorted(runway - {s.name for s in stats})
    rows += [{"partition": n, "range": "", "row_estimate": 0, "size_mb": 0, "state": "runway MISSING", "archive": ""}
             for n in missing]  # fmt: skip
    rows += [
        {"partition": a["partition"], "range": "", "row_estimate": a["rows"], "size_mb": 0, "state": "archived",
         "archive": a["file"]}
        for a in archived
    ]  # fmt: skip
    table_artifact(
        rows,
        key="order-items-partitions",
        description=f"order_items partitions; runway {len(plan.runway)} quarters; {len(archived)} archived",
    )
    return rows


@task(name="restore-archive", cache_policy=NO_CACHE, **RETRIES)
def restore_archive(dump: Path) -> dict[str, Any]:
    hub = runtime.hub()
    with connection(hub.url, hub.schema, autocommit=True) as conn:
        done = restore.restore_archive(conn, hub.url, hub.schema, dump, lock_timeout=LOCK_TIMEOUT)
    return {
        "partition": done.archive.partition,
        "rows": done.rows,
        "orders_invalidated": done.orders_invalidated,
        "orphans_deleted": done.orphans_deleted,
        "file": str(dump),
    }


@flow(name="restore-partition-archive", flow_run_name=run_name("restore-archive", param="path"))
def restore_partition_archive(path: Path, lock_wait: LockWait = 0) -> dict[str, Any]:
    """Bring an archived quarter back (checksum first) and lift the retention horizon for it.

    Args:
        path: The archive file in HUB_ARCHIVE_DIR (a name, or a path inside it), as seen from the machine that runs
            the flow; its sha256 must be the one recorded in partition_archives.
        lock_wait: Seconds to wait for the job lock when another job holds it (0: fail at once, null: wait forever).
    """
    try:  # only HUB_ARCHIVE_DIR: a restore runs whatever SQL the file holds
        dump = confine(path, runtime.hub().cfg.archive_path)
    except OutsideFolder as exc:
        raise partition_archive.ArchiveError(f"archive {exc} (HUB_ARCHIVE_DIR)") from None
    with job_lock(*LOCK_GROUPS, wait=lock_wait):
        out = restore_archive(dump)
    logger().info("restored %s: %d rows from %s", out["partition"], out["rows"], out["file"])
    return out
