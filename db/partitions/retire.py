"""Retention's second half: a verified archive recorded, the quarter detached, checked against it, dropped.

``retire_partition`` drops only what its archive holds:

1. the archive verified (checksum, full read) and recorded in ``partition_archives``;
2. the job's lock session checked alive (``db.locks.guard_write``): after it died another job may be
   writing, and its writes into this quarter would not be in the archive;
3. ``DETACH PARTITION … CONCURRENTLY`` under a short ``lock_timeout`` (its first phase takes SHARE
   UPDATE EXCLUSIVE on the parent). Its second phase waits for every transaction that may still see
   the partition; when that wait times out (an open reader, a BI query) the partition is left "detach
   pending" — its rows invisible and its inserts rejected — so ``FINALIZE`` then runs with a long
   ``lock_timeout``: it also takes only SHARE UPDATE EXCLUSIVE on the parent, so its wait queues no
   reader or writer, and it ends as soon as the reader does;
4. one transaction: the lock rechecked, the detached table counted and checksummed against the
   manifest (both taken in the dump's snapshot), then ``DROP`` and ``dropped_at`` together. On a
   mismatch (rows written after the dump) the table is attached again and ``ArchiveMismatch`` raised:
   nothing is dropped, and the next run archives the quarter anew.

``reconcile`` runs first in each retention run and repairs what a killed earlier run left: a quarter
dropped but not recorded as dropped (``dropped_at``) is recorded; a quarter detached but not dropped
(or still detach pending) is checked against its archive and dropped (or attached again).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import psycopg
from psycopg import sql

from db import pg_tools
from db.ddl_retry import lock_timeout as ddl_lock_timeout
from db.ddl_retry import retry_on_lock_timeout
from db.locks import ActiveLock, guard_write
from db.partitions import rollover
from db.partitions.archive import Archive, ArchiveError, record_archive, verify_archive
from db.partitions.checksum import checksum
from db.partitions.rollover import PARENT, Quarter

log = logging.getLogger(__name__)

FINALIZE_LOCK_TIMEOUT = "1h"  # FINALIZE waits out readers; it holds no reader or writer up meanwhile


class ArchiveMismatch(ArchiveError):
    """The detached quarter is not what its archive holds: attached again, nothing dropped."""


def detach_state(conn: psycopg.Connection, name: str) -> str:
    """attached | pending (a concurrent detach half done) | standalone (detached) | absent."""
    row = conn.execute(
        """SELECT c.oid IS NOT NULL, i.inhdetachpending FROM (SELECT to_regclass(%s) AS oid) c
             LEFT JOIN pg_inherits i ON i.inhrelid = c.oid AND i.inhparent = to_regclass(%s)""",
        (name, PARENT),
    ).fetchone()
    if not row[0]:
        return "absent"
    if row[1] is None:
        return "standalone"
    return "pending" if row[1] else "attached"


def _guard(conn: psycopg.Connection, guards: Sequence[ActiveLock] | None) -> None:
    """LockLost (nothing changed) if the job's lock session is gone."""
    with conn.transaction():
        guard_write(conn, guards)


def detach(
    conn: psycopg.Connection,
    quarter: Quarter,
    *,
    lock_timeout: str = "5s",
    attempts: int = 5,
    sleep: Callable[[float], None] = time.sleep,
    finalize_timeout: str = FINALIZE_LOCK_TIMEOUT,
    guards: Sequence[ActiveLock] | None = None,
) -> None:
    """``DETACH … CONCURRENTLY``, then ``FINALIZE`` under ``finalize_timeout`` if its second phase timed out."""
    parent, child = sql.Identifier(PARENT), sql.Identifier(quarter.name)

    def concurrently() -> None:
        if detach_state(conn, quarter.name) == "attached":
            _guard(conn, guards)
            conn.execute(sql.SQL("ALTER TABLE {} DETACH PARTITION {} CONCURRENTLY").format(parent, child))

    with ddl_lock_timeout(conn, lock_timeout):
        try:
            retry_on_lock_timeout(f"detaching {quarter.name}", concurrently, attempts=attempts, sleep=sleep)
        except psycopg.errors.LockNotAvailable:
            if detach_state(conn, quarter.name) != "pending":
                raise  # phase 1 never got its lock: still attached, nothing to finish
    if detach_state(conn, quarter.name) == "pending":
        log.info("%s is detach pending: FINALIZE, waiting up to %s for readers", quarter.name, finalize_timeout)
        with ddl_lock_timeout(conn, finalize_timeout):
            stmt = sql.SQL("ALTER TABLE {} DETACH PARTITION {} FINALIZE").format(parent, child)
            retry_on_lock_timeout(
                f"finalizing {quarter.name}", lambda: conn.execute(stmt), attempts=attempts, sleep=sleep
            )


def drop_verified(
    conn: psycopg.Connection,
    archive: Archive,
    archive_id: int,
    *,
    lock_timeout: str = "5s",
    attempts: int = 5,
    sleep: Callable[[float], None] = time.sleep,
    guards: Sequence[ActiveLock] | None = None,
) -> int:
    """Drop the detached quarter if it holds exactly what the archive does; its rows. Else attach it again."""
    quarter, name = archive.quarter_of, archive.partition

    def step() -> tuple[int, int]:
        with conn.transaction():
            guard_write(conn, guards)
            conn.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(sql.Identifier(name)))
            if detach_state(conn, name) != "standalone":
                raise ArchiveError(f"{name} is not a detached table any more: not dropped")
            got = checksum(conn, name)
            if _matches(got, archive):
                conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(name)))
                conn.execute("UPDATE partition_archives SET dropped_at = now() WHERE id = %s", (archive_id,))
            return got

    with ddl_lock_timeout(conn, lock_timeout):
        rows, check = retry_on_lock_timeout(f"dropping {name}", step, attempts=attempts, sleep=sleep)
        if _matches((rows, check), archive):
            return rows
        retry_on_lock_timeout(
            f"attaching {name} again", lambda: rollover.attach(conn, quarter), attempts=attempts, sleep=sleep
        )
    raise ArchiveMismatch(
        f"{name} holds {rows} rows (checksum {check}) after the detach, its archive {archive.file} "
        f"{archive.rows} (checksum {archive.checksum}): rows were written after the dump. Not dropped: "
        "attached again; the next `hub partitions` archives it anew"
    )


def _matches(got: tuple[int, int], archive: Archive) -> bool:
    return got[0] == archive.rows and (archive.checksum is None or str(got[1]) == str(archive.checksum))


def retire_partition(
    conn: psycopg.Connection,
    dump: Path,
    *,
    lock_timeout: str = "5s",
    attempts: int = 5,
    sleep: Callable[[float], None] = time.sleep,
    guards: Sequence[ActiveLock] | None = None,
) -> tuple[Archive, int]:
    """Verify ``dump``, record it, detach the quarter, drop it if it matches; (archive, its row id).

    A damaged archive raises ArchiveDamaged before anything changes, a mismatch ArchiveMismatch.
    """
    if not conn.autocommit:
        raise ValueError("retire_partition needs an autocommit connection (DETACH CONCURRENTLY)")
    archive = verify_archive(dump, pg_tools.server_major(conn))
    archive_id = record_archive(conn, archive, dump)
    kw = {"lock_timeout": lock_timeout, "attempts": attempts, "sleep": sleep, "guards": guards}
    detach(conn, archive.quarter_of, **kw)
    drop_verified(conn, archive, archive_id, **kw)
    log.info("detached and dropped %s (%d rows, archived in %s)", archive.partition, archive.rows, dump)
    return archive, archive_id


def reconcile(
    conn: psycopg.Connection,
    *,
    lock_timeout: str = "5s",
    attempts: int = 5,
    sleep: Callable[[float], None] = time.sleep,
    guards: Sequence[ActiveLock] | None = None,
) -> list[str]:
    """``partition_archives`` against the catalog, for each quarter's newest open archive; what was repaired."""
    rows = conn.execute(
        """SELECT DISTINCT ON (year, quarter) id, partition, path FROM partition_archives
            WHERE dropped_at IS NULL AND restored_at IS NULL
              AND (year, quarter) NOT IN (SELECT year, quarter FROM partition_archives
                                           WHERE dropped_at IS NOT NULL AND restored_at IS NULL)
            ORDER BY year, quarter, id DESC"""
    ).fetchall()
    done = []
    kw = {"lock_timeout": lock_timeout, "attempts": attempts, "sleep": sleep, "guards": guards}
    for archive_id, name, path in rows:
        state = detach_state(conn, name)
        if state == "absent":  # dropped by a run killed before it recorded so: the horizon applies now
            conn.execute("UPDATE partition_archives SET dropped_at = now() WHERE id = %s", (archive_id,))
            done.append(f"recorded {name} as dropped (archive {path})")
        elif state in ("standalone", "pending"):  # detached (or half) by a killed run: finish, checked
            try:
                archive = verify_archive(Path(path), pg_tools.server_major(conn))  # about to drop on its word
                detach(conn, archive.quarter_of, **kw)
                drop_verified(conn, archive, archive_id, **kw)
            except ArchiveError as exc:  # kept (or attached again); the rollover after this must still run
                log.warning("reconcile: %s kept: %s", name, exc)
                done.append(f"kept {name}: {exc}")
                continue
            done.append(f"dropped the detached {name}, matching its archive {path}")
    for line in done:
        log.info("reconcile: %s", line)
    return done
