"""Nightly backups you can trust: dump → verify (checksum + full read) → off-machine copy; weekly test
restore; daily retention. The work is in ``db/backups/``; these flows add the lock, retries and reports.

Lock: ``db-maintenance``, the one limit backups share with partition and index DDL (DESIGN.md: "Backups
and DDL share one limit"). flows/locks.py has only exclusive (limit 1) locks, and that is what is
wanted here: a dump holds ACCESS SHARE on every table for its whole run, so DDL started meanwhile
would wait (and stall every query behind it), and two backups at once would only halve each other's
speed. Each flow is a plain call from a notebook too: ``nightly_backup()``, ``test_restore()``,
``prune_backups(dry_run=True)``.
"""

from __future__ import annotations

from contextlib import nullcontext
from datetime import datetime
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from db.backups import copy, dump, restore, retention, verify
from db.backups.manifest import BackupDamaged, BackupError, Manifest, list_backups, of_database, resolve
from db.backups.target import check_target
from db.sealed.copy import instance_dir
from flows import runtime
from flows.hub_status import publish_quietly
from flows.locks import instance, job_lock
from flows.params import LockWait, OptionalText, OptionalTime
from flows.reporting import logger, table_artifact
from flows.retrying import RETRIES
from flows.run_names import DAY, run_name

LOCK_GROUPS = ("db-maintenance",)


def _mb(n: int) -> float:
    return round(n / 2**20, 2)


@task(name="dump-database", cache_policy=NO_CACHE, **RETRIES)
def dump_database(fmt: str, jobs: int, lock_wait_timeout: str) -> tuple[Path, Manifest]:
    hub = runtime.hub()
    return dump.take_backup(
        hub.url, hub.schema, hub.cfg.backup_path, fmt=fmt, jobs=jobs, lock_wait_timeout=lock_wait_timeout,
        reserve_bytes=_reserve(),
    )  # fmt: skip


def _reserve() -> int:
    """HUB_MIN_FREE_DISK_MB: what a dump or a scratch restore must leave free on its disk."""
    return runtime.hub().cfg.min_free_disk_mb * 2**20


@task(name="verify-backup", cache_policy=NO_CACHE)
def verify_backup(path: Path) -> Manifest:
    return verify.verify_backup(path)


@task(name="copy-backup", cache_policy=NO_CACHE, **RETRIES)
def copy_backup(path: Path, manifest: Manifest, dest: Path) -> Path:
    return copy.copy_backup(path, manifest, dest)


@flow(name="nightly-backup", flow_run_name=run_name("backup", when=DAY), log_prints=True)
def nightly_backup(
    fmt: str = "custom", jobs: int = 1, lock_wait: LockWait = 0, lock_wait_timeout: str = "60s"
) -> dict[str, Any]:
    """Dump the hub's database, verify it (recorded in its manifest), copy it off the machine if configured.

    A damaged backup fails the run (after its manifest records why).

    Args:
        fmt: custom (one file) or directory (with jobs > 1, a parallel dump of a large database).
        jobs: Parallel pg_dump jobs (directory format only).
        lock_wait: Seconds to wait for the db-maintenance lock held by another job (0: fail at once, null: forever).
        lock_wait_timeout: How long pg_dump waits for a table lock (DDL) before failing, e.g. 60s.
    """
    hub = runtime.hub()
    with job_lock(*LOCK_GROUPS, wait=lock_wait):
        path, manifest = dump_database(fmt, jobs, lock_wait_timeout)
        try:
            manifest = verify_backup(path)
        except BackupDamaged as exc:
            _backup_report(path, manifest, str(exc), None)
            raise
        copied = None
        if hub.cfg.backup_copy_dir is not None:
            copied = copy_backup(path, manifest, copy_dir(hub.cfg.backup_copy_dir))
    _backup_report(path, manifest, "ok", copied)
    logger().info("backup %s: %.2f MB in %.1f s, verified", path.name, _mb(manifest.size_bytes), manifest.dump_seconds)
    publish_quietly()
    return {"backup": str(path), "manifest": manifest, "copied_to": str(copied) if copied else None}


def copy_dir(root: Path) -> Path:
    """This hub's own subfolder of a (possibly shared) HUB_BACKUP_COPY_DIR: the one it writes and prunes."""
    hub = runtime.hub()
    return instance_dir(root, instance(hub.url, hub.schema))


def _backup_report(path: Path, m: Manifest, verification: str, copied: Path | None) -> None:
    rows = [
        {"item": "backup", "value": path.name},
        {"item": "size_mb", "value": _mb(m.size_bytes)},
        {"item": "dump_seconds", "value": m.dump_seconds},
        {"item": "verification", "value": verification},
        {"item": "sha256", "value": m.sha256},
        {"item": "off-machine copy", "value": str(copied) if copied else "not configured"},
    ]
    rows += [{"item": f"rows {t}", "value": n} for t, n in m.row_counts.items()]
    table_artifact(rows, key="nightly-backup", description=f"backup of {m.database}: {verification}")


@flow(name="verify-backup-file", flow_run_name=run_name("verify-backup", param="backup"), log_prints=True)
def verify_backup_file(backup: str, lock_wait: LockWait = 0) -> Manifest:
    """Check one backup's SHA-256 and read it to its end; the outcome is recorded in its manifest.

    Under db-maintenance: a test restore records its outcome in the same manifest.

    Args:
        backup: A backup in HUB_BACKUP_DIR (its name, or a path inside it).
        lock_wait: Seconds to wait for the db-maintenance lock held by another job (0: fail at once, null: forever).
    """
    path = resolve(backup, runtime.hub().cfg.backup_path)
    with job_lock(*LOCK_GROUPS, wait=lock_wait):
        return verify.verify_backup(path)


@task(name="test-restore", cache_policy=NO_CACHE)
def restore_and_check(path: Path, jobs: int) -> Manifest:
    hub = runtime.hub()
    return restore.test_restore(
        hub.url, path, jobs=jobs, instance=instance(hub.url, hub.schema), reserve_bytes=_reserve()
    )


def newest_verified_backup(directory: Path, database: str, schema: str) -> Path:
    """The newest verified backup of ``database`` (and ``schema``): never another hub's in a shared folder."""
    verified = [p for p, m in of_database(list_backups(directory), database, schema) if m.verified]
    if not verified:
        raise BackupError(f"no verified backup of {database} in {directory} to test-restore; run `hub backup` first")
    return verified[-1]


@flow(name="test-restore", flow_run_name=run_name("test-restore", when=DAY), log_prints=True)
def test_restore(backup: OptionalText = None, jobs: int = 2, lock_wait: LockWait = 0) -> Manifest:
    """Restore a backup (default: the newest verified) into a scratch database, compare, drop it.

    A difference from the manifest, an invalid index or a failed pg_restore fails the run.

    Args:
        backup: A backup file (path, or name in HUB_BACKUP_DIR); default the newest verified one.
        jobs: Parallel pg_restore jobs.
        lock_wait: Seconds to wait for the db-maintenance lock held by another job (0: fail at once, null: forever).
    """
    hub = runtime.hub()
    if backup:
        path = resolve(backup, hub.cfg.backup_path)
    else:
        path = newest_verified_backup(hub.cfg.backup_path, dump.current_database(hub.url), hub.schema)
    with job_lock(*LOCK_GROUPS, wait=lock_wait):
        try:
            manifest = restore_and_check(path, jobs)
            result = "ok"
        except BackupError as exc:
            manifest, result = None, str(exc)
    rows = [{"backup": path.name, "result": result, "restore_seconds": manifest.restore_seconds if manifest else None}]
    table_artifact(rows, key="backup-test-restore", description=f"test restore of {path.name}: {result}")
    publish_quietly()  # a failed test restore too: the page shows it
    if manifest is None:
        raise BackupError(result)
    logger().info("test restore of %s: ok in %.1f s", path.name, manifest.restore_seconds)
    return manifest


test_restore.__test__ = False  # not a pytest test, despite its name


@task(name="prune-backups", cache_policy=NO_CACHE)
def prune_dir(directory: Path, dry_run: bool, now: datetime | None) -> list[retention.Decision]:
    return retention.prune(directory, dry_run=dry_run, now=now)


@flow(name="prune-backups", flow_run_name=run_name("prune-backups", when=DAY), log_prints=True)
def prune_backups(dry_run: bool = False, lock_wait: LockWait = 0, now: OptionalTime = None) -> dict[str, Any]:
    """Retention in the backup folder and this hub's subfolder of the copy dir: > 30 days goes, the newest 7
    verified stay. Only the hub's own backup names are ever touched.

    Args:
        dry_run: Decide and report, remove nothing (and take no lock).
        lock_wait: Seconds to wait for the db-maintenance lock held by another job (0: fail at once, null: forever).
        now: The clock (default: now; tests set it).
    """
    cfg = runtime.hub().cfg
    dirs = [("local", cfg.backup_path)] + ([("copy", copy_dir(cfg.backup_copy_dir))] if cfg.backup_copy_dir else [])
    rows: list[dict[str, Any]] = []
    with nullcontext() if dry_run else job_lock(*LOCK_GROUPS, wait=lock_wait):
        for where, directory in dirs:
            rows += [{"where": where, **d.row()} for d in prune_dir(directory, dry_run, now)]
    removed = [r for r in rows if r["decision"] == "remove"]
    freed = round(sum(r["size_mb"] for r in removed), 2)
    verb = "would remove" if dry_run else "removed"
    summary = f"{verb} {len(removed)} backup(s), {freed} MB; kept {len(rows) - len(removed)}"
    table_artifact(rows, key="backup-retention", description=summary)
    logger().info("%s%s", "dry run: " if dry_run else "", summary)
    if not dry_run:
        publish_quietly()
    return {"dry_run": dry_run, "decisions": rows, "removed": len(removed), "freed_mb": freed, "summary": summary}


@flow(name="restore-backup", flow_run_name=run_name("restore-backup-into", param="target_db"), log_prints=True)
def restore_backup(
    backup: str,
    target_db: str,
    force: bool = False,
    jobs: int = 2,
    lock_wait: LockWait = 0,
    replace_hub_database: bool = False,
) -> dict[str, Any]:
    """Restore ``backup`` into the database ``target_db`` (same server); a non-empty target needs ``force``.

    Args:
        backup: The backup file (path, or name in HUB_BACKUP_DIR).
        target_db: The database to restore into, on the hub's server: a plain name (letters, digits, _);
            never the hub's own database (the server is asked which one that is).
        force: Replace a target that holds tables (it is dropped and re-created; says how much).
        jobs: Parallel pg_restore jobs.
        lock_wait: Seconds to wait for the db-maintenance lock held by another job (0: fail at once, null: forever).
        replace_hub_database: Also allow replacing Prefect's database or one holding a hub's tables.
    """
    hub = runtime.hub()
    path = resolve(backup, hub.cfg.backup_path)
    # Dropping the hub's own database would cut off running imports and this flow's own lock sessions:
    # refused before the lock is taken, and again inside restore_into.
    check_target(hub.url, target_db, force=force, replace_hub_database=replace_hub_database)
    with job_lock(*LOCK_GROUPS, wait=lock_wait):
        out = restore.restore_into(
            hub.url, path, target_db, force=force, jobs=jobs, replace_hub_database=replace_hub_database
        )
    if out["replaced_tables"]:
        logger().warning(
            "replaced database %s: %d tables, %.2f MB dropped", target_db, out["replaced_tables"],
            _mb(out["replaced_bytes"]),
        )  # fmt: skip
    table_artifact([out], key="backup-restore", description=f"{path.name} restored into {target_db}")
    return out
