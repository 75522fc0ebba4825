"""Restores: into a named database (``hub restore``), and the test restore that proves a backup works.

The test restore goes into a scratch database on the same server, compares the main tables' row
counts and ``order_items``' partitions with the manifest (taken in the dump's snapshot), checks that no
index is invalid, and drops the scratch database again; its duration is the evidence for how long a
real restore takes. Owners and grants are not restored (``--no-owner --no-acl``): the restoring role
owns what it restores, so a backup also restores onto a server without the original roles.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path

import psycopg
from psycopg import sql

from db import clock, erasures, pg_tools
from db.backups import scratch
from db.backups.dump import count_rows, partitions_of
from db.backups.manifest import BackupError, Manifest, read_manifest, require_verified, update_manifest
from db.backups.target import check_target
from db.backups.verify import check_checksum
from db.connection import connect, database_conninfo, mask_url
from db.locks import instance_id
from db.sealed.files import NotEnoughSpace

log = logging.getLogger(__name__)

SCRATCH_PREFIX = scratch.SCRATCH_PREFIX
DEFAULT_RESERVE = 256 * 2**20  # free disk left over after a scratch restore or a dump


class RestoreRefused(BackupError):
    """The target database holds data and --force was not given."""


@dataclass(frozen=True)
class TargetState:
    exists: bool
    tables: int
    size_bytes: int


def _admin(url: str) -> psycopg.Connection:
    """The server's ``postgres`` database: CREATE/DROP DATABASE cannot run connected to the database itself."""
    return psycopg.connect(database_conninfo(url, "postgres"), autocommit=True)


def target_state(url: str, target: str) -> TargetState:
    with _admin(url) as c:
        row = c.execute("SELECT pg_database_size(datname) FROM pg_database WHERE datname = %s", (target,)).fetchone()
    if row is None:
        return TargetState(False, 0, 0)
    with psycopg.connect(database_conninfo(url, target), autocommit=True) as c:
        tables = c.execute(
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S') "
            "AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%%'"
        ).fetchone()[0]
    return TargetState(True, int(tables), int(row[0]))


def _recreate(url: str, target: str, *, drop: bool) -> None:
    with _admin(url) as c:
        if drop:
            c.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(target)))
        c.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(target)))


def _pg_restore(url: str, target: str, backup: Path, manifest: Manifest, jobs: int) -> None:
    pg_restore = pg_tools.find_tool("pg_restore", manifest.server_major)
    args = [str(pg_restore), "--exit-on-error", "--no-owner", "--no-acl", f"-j{max(1, jobs)}"]
    with pg_tools.libpq_env(database_conninfo(url, target)) as (conninfo, env):
        done = pg_tools.run([*args, "--dbname", conninfo, str(backup)], env)
    if done.returncode != 0:
        raise BackupError(f"pg_restore of {backup.name} into {target} failed: {mask_url(done.stderr.strip())}")


def restore_into(
    url: str, backup: Path, target: str, *, force: bool = False, jobs: int = 2, replace_hub_database: bool = False
) -> dict:
    """Restore ``backup`` into the database ``target`` on the server of ``url``.

    Never into ``url``'s own database; Prefect's or another hub's only with ``replace_hub_database``
    (:func:`db.backups.target.check_target`). Refuses when ``target`` holds any table unless ``force``
    (then it is dropped and re-created: what was dropped is returned and logged). Only a verified hub
    backup is restored; its checksum is checked first. Its last step re-applies every erasure ``url``'s
    database recorded since the backup began (:func:`db.erasures.reapply`): a restore never brings an
    erased person back.
    """
    check_target(url, target, force=force, replace_hub_database=replace_hub_database)
    manifest = read_manifest(backup)
    require_verified(backup, manifest)
    check_checksum(backup, manifest)
    state = target_state(url, target)
    if state.tables and not force:
        raise RestoreRefused(
            f"database {target} is not empty ({state.tables} tables, {state.size_bytes / 2**20:.1f} MB); "
            "pass --force to drop and replace it"
        )
    if state.exists and state.tables:
        log.warning("dropping database %s (%d tables, %d bytes) to restore %s", target, state.tables,
                    state.size_bytes, backup.name)  # fmt: skip
    if not state.exists or state.tables:
        _recreate(url, target, drop=state.exists)
    t0 = time.perf_counter()
    with connect(url, manifest.schema) as live:  # erasures after the dump began: the backup may not hold them
        later = erasures.read_log(live, datetime.fromisoformat(manifest.started_at))
    _pg_restore(url, target, backup, manifest, jobs)
    reapplied = {}
    if later:
        with connect(database_conninfo(url, target), manifest.schema) as restored:
            reapplied = erasures.reapply(restored, later)
        log.info("re-applied %d erasure(s) recorded after %s: %s", len(later.erasures), backup.name, reapplied)
    return {
        "backup": backup.name,
        "target": target,
        "replaced_tables": state.tables,
        "replaced_bytes": state.size_bytes,
        "seconds": round(time.perf_counter() - t0, 3),
        "erasures_reapplied": len(later.erasures),
        "erased_rows": reapplied,
    }


def check_restored(url: str, target: str, manifest: Manifest) -> list[str]:
    """What differs between the restored database and the manifest (empty: nothing)."""
    problems = []
    with connect(database_conninfo(url, target), manifest.schema, autocommit=True) as c:
        counts, parts = count_rows(c), partitions_of(c)
        invalid = [
            r[0]
            for r in c.execute(
                "SELECT indexrelid::regclass::text FROM pg_index WHERE NOT indisvalid OR NOT indisready ORDER BY 1"
            ).fetchall()
        ]
    for table, expected in manifest.row_counts.items():
        if counts.get(table) != expected:
            problems.append(f"{table}: {counts.get(table)} rows restored, {expected} in the backup")
    if parts != manifest.partitions:
        problems.append(f"order_items partitions differ: restored {parts}, backed up {manifest.partitions}")
    if invalid:
        problems.append(f"invalid indexes after restore: {', '.join(invalid)}")
    return problems


def test_restore(
    url: str,
    backup: Path,
    *,
    jobs: int = 2,
    record: bool = True,
    instance: str | None = None,
    reserve_bytes: int = DEFAULT_RESERVE,
) -> Manifest:
    """Restore into a scratch database, check it against the manifest, drop it; recorded in the manifest.

    Run under the db-maintenance lock: this hub's scratch databases a killed run left are dropped first,
    and none is created without room for it (plus ``reserve_bytes``) on the server's disk.
    """
    manifest = read_manifest(backup)
    require_verified(backup, manifest)
    if instance is None:
        with connect(url, manifest.schema, autocommit=True) as c:
            instance = instance_id(c)
    with _admin(url) as c:
        scratch.drop_stale(c, instance)
        try:
            scratch.check_room(c, manifest, reserve_bytes)
        except NotEnoughSpace as exc:
            raise BackupError(str(exc)) from None
    name = scratch.scratch_name(instance)
    error = None
    t0 = time.perf_counter()
    try:
        check_checksum(backup, manifest)
        _recreate(url, name, drop=False)
        _pg_restore(url, name, backup, manifest, jobs)
        seconds = time.perf_counter() - t0
        problems = check_restored(url, name, manifest)
        if problems:
            error = f"test restore of {backup.name} differs from its manifest: " + "; ".join(problems)
    except BackupError as exc:
        seconds, error = time.perf_counter() - t0, str(exc)
    finally:
        with _admin(url) as c:
            c.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
    outcome = {"restore_tested": error is None, "restore_error": error, "restore_seconds": round(seconds, 3),
               "restore_tested_at": clock.now().isoformat()}  # fmt: skip
    manifest = update_manifest(backup, **outcome) if record else replace(manifest, **outcome)
    if error:
        raise BackupError(error)
    return manifest
