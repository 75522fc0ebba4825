"""``hub partitions restore-archive``: an archived quarter back, exactly as archived, then made current.

1. the archive verified (checksum and full read, ``db.partitions.archive.verify_archive``);
2. the quarter's table created *unattached*, with a CHECK of its range (``db.partitions.rollover``);
3. ``pg_restore --data-only`` into it, then its rows counted (and checksummed, when the manifest has
   one) against the manifest: a restore that loads nothing — a schema filter that matches no entry
   exits 0 — or the wrong rows fails here, drops the table it made, and lifts nothing;
4. one transaction: ``ATTACH`` (the CHECK proves the range: no scan), the horizon lifted
   (``restored_at``), and the items made right for orders that changed while archived: the loader
   kept their headers current but dropped their items, so the restored items are the archived ones.
   Their ``content_hash`` is invalidated (the next snapshot rewrites their items, however unchanged
   the line), and restored items whose order no longer exists are deleted (the count is logged).

A kill anywhere before 4 leaves at worst the unattached table, which the next restore reloads (it is
empty or refused when it holds rows); the horizon stays until 4 commits.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql

from db import pg_tools
from db.ddl_retry import lock_timeout as ddl_lock_timeout
from db.ddl_retry import retry_on_lock_timeout
from db.partitions import rollover
from db.partitions.archive import Archive, ArchiveError, check_recorded, find_tool, verify_archive
from db.partitions.checksum import checksum
from db.partitions.rollover import PARENT, Quarter

log = logging.getLogger(__name__)

INVALIDATED = ""  # a content_hash no line has: the next snapshot's line counts as changed


@dataclass(frozen=True)
class Restored:
    archive: Archive
    rows: int  # loaded and verified
    orders_invalidated: int  # orders of the quarter synced after the archive: their items are rewritten next
    orphans_deleted: int  # restored items whose order no longer exists


def _relation(conn: psycopg.Connection, name: str) -> str:
    """attached | standalone | absent (the quarter's table, as a partition of order_items or not)."""
    row = conn.execute(
        """SELECT c.oid, EXISTS (SELECT 1 FROM pg_inherits i WHERE i.inhrelid = c.oid
                                      AND i.inhparent = to_regclass(%s))
             FROM pg_class c WHERE c.oid = to_regclass(%s)""",
        (PARENT, name),
    ).fetchone()
    if row is None:
        return "absent"
    return "attached" if row[1] else "standalone"


def _count(conn: psycopg.Connection, name: str) -> int:
    return conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(name))).fetchone()[0]


def restore_archive(
    conn: psycopg.Connection,
    url: str,
    schema: str,
    dump: Path,
    *,
    lock_timeout: str = "5s",
    attempts: int = 5,
    sleep: Callable[[float], None] = time.sleep,
) -> Restored:
    """Bring an archived quarter back (see the module); refused when its table already holds rows."""
    if not conn.autocommit:
        raise ValueError("restore_archive needs an autocommit connection")
    major = pg_tools.server_major(conn)
    archive = verify_archive(dump, major)
    check_recorded(conn, archive, dump)  # the hub's own record, not the file's sidecar, decides (M8)
    quarter = archive.quarter_of
    where = _relation(conn, quarter.name)
    if where != "absent":
        n = _count(conn, quarter.name)
        if n or where == "attached":
            raise ArchiveError(
                f"{quarter.name} exists ({where}) and holds {n} rows: restoring {dump.name} "
                + ("would duplicate them" if n else "needs the quarter unattached; nothing was changed")
            )
        # an empty unattached table of that name: a restore killed before it loaded; load into it
    with conn.transaction():
        rollover.create_unattached(conn, quarter, with_check=True)
    loaded = _load(conn, url, schema, dump, archive)
    with ddl_lock_timeout(conn, lock_timeout):
        counts = retry_on_lock_timeout(
            f"attaching {quarter.name}",
            lambda: _attach_and_lift(conn, quarter, archive),
            attempts=attempts,
            sleep=sleep,
        )
    log.info(
        "restored %s (%d rows) from %s; %d orders changed while archived get their items rewritten by the next "
        "snapshot; %d items of orders that no longer exist deleted",
        quarter.name,
        loaded,
        dump,
        *counts,
    )
    return Restored(archive, loaded, *counts)


def _load(conn: psycopg.Connection, url: str, schema: str, dump: Path, archive: Archive) -> int:
    """pg_restore into the unattached table, then its rows checked against the manifest; or ArchiveError."""
    name = archive.partition
    pg_restore = find_tool("pg_restore", pg_tools.server_major(conn))
    args = ["--data-only", "--single-transaction", "--no-owner", "-n", schema, "-t", name]
    with pg_tools.libpq_env(url) as (conninfo, env):
        done = pg_tools.run([str(pg_restore), *args, "--dbname", conninfo, str(dump)], env)
    rows, check = checksum(conn, name)
    problem = None
    if done.returncode != 0:
        problem = f"pg_restore failed: {done.stderr.strip()}"
    elif rows != archive.rows:
        problem = f"it loaded {rows} rows, the archive's manifest says {archive.rows}"
    elif archive.checksum is not None and str(check) != str(archive.checksum):
        problem = f"the loaded rows' checksum {check} differs from the archive's {archive.checksum}"
    if problem:
        _drop_own_unattached(conn, name)
        raise ArchiveError(
            f"restore of {dump.name} into {name} refused: {problem}. Nothing was attached and the quarter "
            "stays archived (beyond retention)"
        )
    return rows


def _drop_own_unattached(conn: psycopg.Connection, name: str) -> None:
    """Drop the table this restore created and loaded, once sure it is still not a partition."""
    with conn.transaction():
        conn.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(sql.Identifier(name)))
        if _relation(conn, name) == "standalone":
            n = _count(conn, name)
            conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(name)))
            log.info("dropped the unattached %s this restore made (%d rows it loaded, not verified)", name, n)


def _attach_and_lift(conn: psycopg.Connection, quarter: Quarter, archive: Archive) -> tuple[int, int]:
    """One transaction: attach, lift the horizon, invalidate changed orders, delete orphaned items."""
    q = sql.Identifier(quarter.name)
    with conn.transaction():
        rollover.attach(conn, quarter)
        conn.execute(
            sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(q, sql.Identifier(rollover.range_check_name(quarter)))
        )
        conn.execute(
            """UPDATE partition_archives SET restored_at = now()
                WHERE year = %s AND quarter = %s AND restored_at IS NULL""",
            (quarter.year, quarter.q),
        )
        invalidated = conn.execute(
            """UPDATE orders SET content_hash = %s
                WHERE created_at >= %s AND created_at < %s AND synced_at >= %s AND content_hash <> %s""",
            (INVALIDATED, quarter.start, quarter.end, archive.archived_at, INVALIDATED),
        ).rowcount
        orphans = conn.execute(
            sql.SQL("DELETE FROM {} i WHERE NOT EXISTS (SELECT 1 FROM orders o WHERE o.code = i.order_code)").format(q)
        ).rowcount
    return invalidated, orphans
