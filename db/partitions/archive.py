"""Archives of ``order_items`` quarters: written with pg_dump, verified, recorded.

Never drop without a verified archive: the partition is dumped (``pg_dump -Fc -t``, a binary of the
server's major version, in a snapshot exported by a transaction that counts and checksums the rows
in that very snapshot: the manifest says what the dump holds) as a sealed file (``db.sealed``: 0600,
fsync'd, durable rename, a name unique within a second) with its ``.archive.json`` manifest beside it,
and the dump is verified by checksum *and* by a full read (``pg_restore -f /dev/null``:
``pg_restore --list`` reads a truncated dump without complaint).

Detach and drop: ``db/partitions/retire.py``; the way back: ``db/partitions/restore.py``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import psycopg

from db import clock, pg_tools
from db.connection import connect, mask_url
from db.partitions.checksum import checksum
from db.partitions.rollover import Quarter
from db.sealed import ARCHIVE, files
from db.sealed import check as sealed_check
from db.sealed.copy import copy_sealed

log = logging.getLogger(__name__)

# Archives written before the sealed-file stack: <partition>-<stamp>.dump with .manifest.json and .sha256.
LEGACY_MANIFEST_SUFFIX = ".manifest.json"


class ArchiveError(Exception):
    """An archive could not be written, verified or restored; nothing was dropped."""


class ArchiveDamaged(ArchiveError):
    """The archive's checksum or full read failed: the partition is kept."""


class ToolMissing(ArchiveError, pg_tools.ToolMissing):
    """No pg_dump / pg_restore of the server's major version was found."""


def find_tool(name: str, major: int) -> Path:
    """``pg_dump``/``pg_restore`` of PostgreSQL ``major`` (see ``db.pg_tools.find_tool``)."""
    try:
        return pg_tools.find_tool(name, major)
    except pg_tools.ToolMissing as exc:
        raise ToolMissing(str(exc)) from None


# --- archive ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Archive:
    partition: str
    year: int
    quarter: int
    range_start: str
    range_end: str
    rows: int
    sha256: str
    pg_dump_version: str
    file: str  # the dump's file name; its manifest sits beside it
    archived_at: str
    checksum: str | None = None  # db.partitions.split.checksum of the rows, in the dump's own snapshot

    @property
    def quarter_of(self) -> Quarter:
        return Quarter(self.year, self.quarter)


def manifest_path(dump: Path) -> Path:
    return ARCHIVE.manifest_path(dump)


def archive_partition(conn: psycopg.Connection, url: str, schema: str, quarter: Quarter, directory: Path) -> Path:
    """Dump one partition to ``directory`` as a sealed file with its manifest; returns the dump's path.

    Written like a backup (``db.sealed``): a name unique within a second, a 0600 temporary file, fsync,
    rename, the folder's fsync, so a killed run (or a power loss) leaves no file that looks like an archive.
    """
    major = pg_tools.server_major(conn)
    pg_dump = find_tool("pg_dump", major)
    with dump_snapshot(url, schema) as (snap, snapshot):
        rows, check = checksum(snap, quarter.name)  # what the dump holds: counted in its own snapshot
        return _dump(url, schema, quarter, directory, pg_dump, snapshot, rows, check)


@contextmanager
def dump_snapshot(url: str, schema: str) -> Iterator[tuple[psycopg.Connection, str]]:
    """A REPEATABLE READ transaction and its exported snapshot, open while pg_dump (``--snapshot``) runs."""
    with connect(url, schema, autocommit=True) as snap:
        snap.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        try:
            yield snap, snap.execute("SELECT pg_export_snapshot()").fetchone()[0]
        finally:
            snap.execute("ROLLBACK")


def _dump(
    url: str, schema: str, quarter: Quarter, directory: Path, pg_dump: Path, snapshot: str, rows: int, check: int
) -> Path:
    files.private_dir(directory)
    dump = ARCHIVE.new_path(directory, quarter.name, clock.now(), ".archive")
    tmp = files.prepare_temp(dump)
    table = f'"{schema}"."{quarter.name}"'
    args = [str(pg_dump), "-Fc", "-t", table, "-f", str(tmp), f"--snapshot={snapshot}"]
    with pg_tools.libpq_env(url) as (conninfo, env):
        done = pg_tools.run([*args, "--dbname", conninfo], env)
    if done.returncode != 0:
        files.discard(tmp)
        raise ArchiveError(f"pg_dump of {quarter.name} failed: {mask_url(done.stderr.strip())}")
    files.seal(tmp, dump)
    digest = pg_tools.sha256_of(dump)
    archive = Archive(
        partition=quarter.name,
        year=quarter.year,
        quarter=quarter.q,
        range_start=quarter.start.isoformat(),
        range_end=quarter.end.isoformat(),
        rows=int(rows),
        sha256=digest,
        pg_dump_version=pg_tools.tool_version(pg_dump),
        file=dump.name,
        archived_at=clock.now().isoformat(),
        checksum=str(check),
    )
    files.write_json(manifest_path(dump), asdict(archive))
    log.info("archived %s (%d rows) to %s", quarter.name, rows, dump)
    return dump


def read_manifest(dump: Path) -> Archive:
    path = manifest_path(dump)
    if not path.exists() and dump.with_name(dump.name + LEGACY_MANIFEST_SUFFIX).exists():
        path = dump.with_name(dump.name + LEGACY_MANIFEST_SUFFIX)
    try:
        return Archive(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError) as exc:
        raise ArchiveDamaged(f"archive {dump}: its manifest {path.name} is missing or unreadable") from exc


def verify_archive(dump: Path, major: int) -> Archive:
    """Checksum (against the manifest) and a full read with pg_restore (``db.sealed.check``), or ArchiveDamaged."""
    if not dump.is_file():
        raise ArchiveDamaged(f"archive {dump} does not exist")
    archive = read_manifest(dump)
    try:
        sealed_check.check(dump, archive.sha256, major)
    except sealed_check.Damaged as exc:
        raise ArchiveDamaged(
            f"archive {exc}. The partition {archive.partition} was not dropped; archive it again (hub partitions) "
            "or investigate."
        ) from None
    except pg_tools.ToolMissing as exc:
        raise ToolMissing(str(exc)) from None
    return archive


def copy_archive(dump: Path, dest_dir: Path) -> Path:
    """Copy an archive and its manifest off the machine (``db.sealed.copy``: sha256 re-read there)."""
    archive = read_manifest(dump)
    try:
        return copy_sealed(ARCHIVE, dump, archive.sha256, manifest_path(dump).read_text(), dest_dir)
    except sealed_check.Damaged as exc:
        raise ArchiveDamaged(f"{exc}; {archive.partition} was not dropped") from None


def check_recorded(conn: psycopg.Connection, archive: Archive, dump: Path) -> None:
    """Only an archive the hub itself recorded is restored: its sha256 must be in ``partition_archives``.

    The manifest is a sidecar whoever writes the file can write too; the row is the hub's own record.
    """
    row = conn.execute(
        "SELECT 1 FROM partition_archives WHERE partition = %s AND sha256 = %s", (archive.partition, archive.sha256)
    ).fetchone()
    if row is None:
        raise ArchiveError(
            f"{dump.name} is not an archive this hub recorded (no {archive.partition} with sha256 {archive.sha256} "
            "in partition_archives): refusing to restore it"
        )


def record_archive(conn: psycopg.Connection, archive: Archive, dump: Path) -> int:
    """The archive's ``partition_archives`` row (once per file: a retried task finds its own row)."""
    row = conn.execute("SELECT id FROM partition_archives WHERE path = %s", (str(dump),)).fetchone()
    if row is not None:
        return row[0]
    return conn.execute(
        """INSERT INTO partition_archives (partition, year, quarter, range_start, range_end, rows, sha256, path,
             pg_dump_version) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id""",
        (
            archive.partition,
            archive.year,
            archive.quarter,
            archive.range_start,
            archive.range_end,
            archive.rows,
            archive.sha256,
            str(dump),
            archive.pg_dump_version,
        ),
    ).fetchone()[0]
