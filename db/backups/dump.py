"""``pg_dump`` of the hub's database into the backup folder: atomic, 0600, with its manifest.

The row counts in the manifest are taken in the dump's own snapshot: this connection opens a
REPEATABLE READ transaction, exports its snapshot and hands it to ``pg_dump --snapshot``, then counts
while pg_dump runs (so the counts cost no extra wall time and match the dump row for row; the test
restore compares against them). ``--lock-wait-timeout`` (and ``lock_timeout`` for the counts) make a
backup that meets a DDL statement's lock fail fast instead of queueing behind it — and making every
query queue behind both.
"""

from __future__ import annotations

import logging
import re
import subprocess
import time
from pathlib import Path

import psycopg
from psycopg import sql

from db import clock, pg_tools
from db.backups.manifest import BackupError, Manifest, list_backups, of_database, write_manifest
from db.connection import connect, mask_url
from db.sealed import BACKUP, files

log = logging.getLogger(__name__)

# The shop mirror's tables: what a restore must bring back (partitions are counted through their parent).
MAIN_TABLES = ("orders", "order_items", "customers", "products", "product_variants", "customer_metrics")
FORMATS = {"custom": ("c", ".dump"), "directory": ("d", ".dir")}
DEFAULT_RESERVE = 256 * 2**20  # free disk that must be left after the dump


class BackupLockTimeout(BackupError):
    """A lock held by another session (DDL) was not granted within the lock wait timeout."""


def _ms(timeout: str | float) -> int:
    """``30s``, ``500ms``, ``2min`` or seconds as a number → milliseconds."""
    if isinstance(timeout, (int, float)):
        return int(timeout * 1000)
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|min)?\s*", timeout)
    if not m:
        raise ValueError(f"lock wait timeout {timeout!r}: use e.g. 30s, 500ms or 2min")
    return int(float(m[1]) * {"ms": 1, "s": 1000, "min": 60_000, None: 1000}[m[2]])


def partitions_of(conn: psycopg.Connection, parent: str = "order_items") -> list[str]:
    rows = conn.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = to_regclass(%s) ORDER BY 1",
        (parent,),
    ).fetchall()
    return [r[0] for r in rows]


def current_database(url: str) -> str:
    """The database the server says ``url`` reaches: what a backup's manifest records as its database."""
    with connect(url, autocommit=True) as conn:
        return conn.execute("SELECT current_database()").fetchone()[0]


def count_rows(conn: psycopg.Connection) -> dict[str, int]:
    """Exact row counts of the main tables that exist (in the connection's schema)."""
    counts = {}
    for t in MAIN_TABLES:
        if conn.execute("SELECT to_regclass(%s)", (t,)).fetchone()[0] is None:
            continue
        counts[t] = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(t))).fetchone()[0]
    return counts


def dump_estimate(conn: psycopg.Connection, directory: Path, database: str) -> int:
    """About how large the dump gets: this database's last backup +25 %, else the database's size less its
    indexes (an upper bound: the dump is compressed and holds no index). Read without taking any table lock
    (``pg_table_size`` would queue behind the very DDL ``--lock-wait-timeout`` is there to fail fast on)."""
    earlier = of_database(list_backups(directory), database)
    if earlier:
        return int(earlier[-1][1].size_bytes * 1.25)
    row = conn.execute(
        """SELECT pg_database_size(current_database())
                  - coalesce((SELECT sum(relpages)::bigint FROM pg_class WHERE relkind = 'i'), 0)
                    * current_setting('block_size')::bigint"""
    ).fetchone()
    return max(0, int(row[0]))


def _lock_message(stderr: str, ms: int) -> str | None:
    """pg_dump's lock wait ran out (it says "statement timeout" on its LOCK TABLE), or our counts' did."""
    if not ("LOCK TABLE" in stderr or "could not obtain lock" in stderr or "lock timeout" in stderr):
        return None
    first = stderr.strip().splitlines()[0] if stderr.strip() else ""
    return (
        f"the backup did not get its table locks within {ms / 1000:g} s (--lock-wait-timeout): another session "
        f"holds a conflicting lock, e.g. a long DDL statement ({first}). "
        "Nothing was written; run it again when the DDL is done."
    )


def take_backup(
    url: str,
    schema: str,
    directory: Path,
    *,
    fmt: str = "custom",
    jobs: int = 1,
    lock_wait_timeout: str | float = "60s",
    compress: int | None = None,
    reserve_bytes: int = DEFAULT_RESERVE,
) -> tuple[Path, Manifest]:
    """Dump the database of ``url`` into ``directory``; returns the backup's path and its manifest.

    Refused before pg_dump starts when the folder's disk lacks room for the dump plus ``reserve_bytes``
    (on the embedded setup it is the live cluster's disk too)."""
    if fmt not in FORMATS:
        raise ValueError(f"backup format {fmt!r}: use custom or directory")
    if jobs > 1 and fmt != "directory":
        raise ValueError("parallel dumps (--jobs) need the directory format (--format directory)")
    ms = _ms(lock_wait_timeout)
    files.private_dir(directory)
    started = clock.now()
    t0 = time.perf_counter()
    with connect(url, schema, autocommit=True) as conn, pg_tools.libpq_env(url) as (conninfo, env):
        major = pg_tools.server_major(conn)
        pg_dump = pg_tools.find_tool("pg_dump", major)
        server_version = conn.execute("SHOW server_version").fetchone()[0]
        database = conn.info.dbname
        letter, suffix = FORMATS[fmt]
        try:
            files.check_free_space(directory, dump_estimate(conn, directory, database), reserve_bytes, "the backup")
        except files.NotEnoughSpace as exc:
            raise BackupError(str(exc)) from None
        final = BACKUP.new_path(directory, database, started, suffix)  # two within a second: never overwrite
        tmp = files.prepare_temp(final, folder=fmt == "directory")
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        conn.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(f"{ms}ms")))
        snapshot = conn.execute("SELECT pg_export_snapshot()").fetchone()[0]
        args = [str(pg_dump), f"-F{letter}", "-f", str(tmp), f"--lock-wait-timeout={ms}", f"--snapshot={snapshot}"]
        args += [f"-j{jobs}"] if jobs > 1 else []
        args += [f"-Z{compress}"] if compress is not None else []
        proc = subprocess.Popen(
            [*args, "--dbname", conninfo],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd="/",
        )
        try:
            counts, parts = count_rows(conn), partitions_of(conn)
            stderr = proc.communicate()[1]
        except psycopg.errors.LockNotAvailable as exc:
            proc.kill()
            proc.communicate()
            files.discard(tmp)
            raise BackupLockTimeout(_lock_message(f"lock timeout: {exc}", ms) or str(exc)) from None
        except BaseException:
            proc.kill()
            proc.communicate()
            files.discard(tmp)
            raise
        finally:
            if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                conn.execute("ROLLBACK")
    if proc.returncode != 0:
        files.discard(tmp)
        message = _lock_message(stderr, ms)
        if message:
            raise BackupLockTimeout(message)
        raise BackupError(f"pg_dump of {database} failed (exit {proc.returncode}): {mask_url(stderr.strip())}")
    files.seal(tmp, final)
    dump_seconds = time.perf_counter() - t0
    manifest = Manifest(
        file=final.name,
        format=fmt,
        database=database,
        schema=schema,
        server_version=server_version,
        started_at=started.isoformat(),
        finished_at=clock.now().isoformat(),
        size_bytes=pg_tools.size_of(final),
        sha256=pg_tools.sha256_of(final),
        pg_dump_version=pg_tools.tool_version(pg_dump),
        row_counts=counts,
        partitions=parts,
        dump_seconds=round(dump_seconds, 3),
    )
    write_manifest(final, manifest)
    log.info("backup of %s written: %s (%d bytes)", database, final, manifest.size_bytes)
    return final, manifest
