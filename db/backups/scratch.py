"""The test restore's scratch databases: named per hub instance, dropped when a killed run left one, and
not created when the server's disk has no room for them.

A test restore killed before its ``finally`` (SIGKILL, OOM, a lost worker) leaves a full-size
``hub_restore_test_*`` database behind, and the next weekly run would add another. Under the
``db-maintenance`` lock no other test restore of this hub runs, so every scratch database named for this
instance is stale and dropped first; one named the old way (no instance) only when no session uses it.
Never any other database.
"""

from __future__ import annotations

import logging
import re
import uuid
from pathlib import Path

import psycopg
from psycopg import sql

from db.backups.manifest import Manifest
from db.sealed.files import check_free_space

log = logging.getLogger(__name__)

SCRATCH_PREFIX = "hub_restore_test_"
_LEGACY = re.compile(r"^hub_restore_test_[0-9a-f]{10}$")
LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")


def scratch_name(instance: str) -> str:
    if not re.fullmatch(r"[0-9a-f]{1,16}", instance):
        raise ValueError(f"instance id {instance!r}: expected the short hex id of db.locks.instance_id")
    return f"{SCRATCH_PREFIX}{instance}_{uuid.uuid4().hex[:10]}"


def drop_stale(admin: psycopg.Connection, instance: str) -> list[tuple[str, int]]:
    """Drop this instance's leftover scratch databases (and unused old-style ones); returns (name, bytes) each."""
    ours = re.compile(rf"^{SCRATCH_PREFIX}{re.escape(instance)}_[0-9a-f]{{10}}$")
    rows = admin.execute(
        """SELECT d.datname, pg_database_size(d.oid),
                  EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.datname = d.datname)
             FROM pg_database d WHERE d.datname LIKE 'hub\\_restore\\_test\\_%' ORDER BY 1"""
    ).fetchall()
    dropped = []
    for name, size, in_use in rows:
        if not (ours.match(name) or (_LEGACY.match(name) and not in_use)):
            continue
        log.warning("dropping %s (%d bytes), a scratch database a killed test restore left behind", name, size)
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        dropped.append((name, int(size)))
    return dropped


def server_disk(admin: psycopg.Connection) -> Path | None:
    """The server's data folder, when it is on this machine and this role may see it (else None)."""
    host = admin.info.host or ""
    if not (host.startswith("/") or host in LOCAL_HOSTS):
        return None
    try:
        with admin.transaction():
            where = admin.execute("SELECT current_setting('data_directory')").fetchone()[0]
    except psycopg.errors.InsufficientPrivilege:
        return None
    path = Path(where)
    return path if path.exists() else None


def restored_size(admin: psycopg.Connection, manifest: Manifest) -> int:
    """About how much disk the restored database takes: the source database's size while it exists."""
    row = admin.execute(
        "SELECT pg_database_size(oid) FROM pg_database WHERE datname = %s", (manifest.database,)
    ).fetchone()
    return int(row[0]) if row else 4 * manifest.size_bytes  # a compressed dump restores to a few times its size


def check_room(admin: psycopg.Connection, manifest: Manifest, reserve_bytes: int) -> None:
    """Refuse (NotEnoughSpace) a scratch restore the server's disk has no room for: it shares the live WAL's disk."""
    disk = server_disk(admin)
    if disk is None:
        log.info("the server's disk is not visible from here: no free-space check before the scratch restore")
        return
    check_free_space(disk, restored_size(admin, manifest), reserve_bytes, f"a scratch restore of {manifest.file}")
