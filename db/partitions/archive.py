"""Archives of ``order_items`` quarters: written with pg_dump, verified, recorded.

Never drop without a verified archive: the partition is dumped (``pg_dump -Fc -t``, a binary of the
server's major version, in a snapshot exported by a transaction that counts and checksums the rows
in that very snapshot: the manifest says what the dump holds), a ``.sha256`` file and a JSON manifest
are written beside the dump, and the dump is verified by checksum *and* by a full read
(``pg_restore -f /dev/null``: ``pg_restore --list`` reads a truncated dump without complaint).

Detach and drop: ``db/partitions/retire.py``; the way back: ``db/partitions/restore.py``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import psycopg

from db import pg_tools
from db.connection import connect
from db.partitions.checksum import checksum
from db.partitions.rollover import Quarter

log = logging.getLogger(__name__)

MANIFEST_SUFFIX = ".manifest.json"
SHA_SUFFIX = ".sha256"


class ArchiveError(Exception):
    """An archive could not be written, verified or restored; nothing was dropped."""


class ArchiveDamaged(ArchiveError):
    """The archive's checksum or full read failed: the partition is kept."""


class ToolMissing(ArchiveError, pg_tools.ToolMissing):
    """No pg_dump / pg_restore of the server's major version was found."""


# --- the binaries (db/pg_tools.py) ---------------------------------------------------------------------

server_major = pg_tools.server_major
sha256_of = pg_tools.sha256_of
_libpq_env = pg_tools.libpq_env
_run = pg_tools.run


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
    file: str  # the dump's file name; the manifest and .sha256 sit beside it
    archived_at: str
    checksum: str | None = None  # db.partitions.split.checksum of the rows, in the dump's own snapshot

    @property
    def quarter_of(self) -> Quarter:
        return Quarter(self.year, self.quarter)


def manifest_path(dump: Path) -> Path:
    return dump.with_name(dump.name + MANIFEST_SUFFIX)


def sha_path(dump: Path) -> Path:
    return dump.with_name(dump.name + SHA_SUFFIX)


def archive_partition(conn: psycopg.Connection, url: str, schema: str, quarter: Quarter, directory: Path) -> Path:
    """Dump one partition to ``directory`` with its .sha256 and manifest; returns the dump's path.

    The dump is written under a temporary name and renamed when complete, so a killed run leaves no
    file that looks like an archive.
    """
    major = server_major(conn)
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
    directory.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    dump = directory / f"{quarter.name}-{stamp}.dump"
    tmp = dump.with_name(dump.name + ".partial")
    conninfo, env = _libpq_env(url)
    table = f'"{schema}"."{quarter.name}"'
    args = [str(pg_dump), "-Fc", "-t", table, "-f", str(tmp), f"--snapshot={snapshot}"]
    done = _run([*args, "--dbname", conninfo], env)
    if done.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise ArchiveError(f"pg_dump of {quarter.name} failed: {done.stderr.strip()}")
    os.replace(tmp, dump)
    digest = sha256_of(dump)
    sha_path(dump).write_text(f"{digest}  {dump.name}\n")
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
        archived_at=datetime.now(UTC).isoformat(),
        checksum=str(check),
    )
    manifest_path(dump).write_text(json.dumps(asdict(archive), indent=2) + "\n")
    log.info("archived %s (%d rows) to %s", quarter.name, rows, dump)
    return dump


def read_manifest(dump: Path) -> Archive:
    try:
        return Archive(**json.loads(manifest_path(dump).read_text()))
    except (OSError, ValueError, TypeError) as exc:
        raise ArchiveDamaged(
            f"archive {dump}: its manifest {manifest_path(dump).name} is missing or unreadable"
        ) from exc


def verify_archive(dump: Path, major: int) -> Archive:
    """Checksum (against the .sha256 file and the manifest) and a full read with pg_restore, or ArchiveDamaged."""
    if not dump.is_file():
        raise ArchiveDamaged(f"archive {dump} does not exist")
    archive = read_manifest(dump)
    try:
        recorded = sha_path(dump).read_text().split()[0]
    except (OSError, IndexError) as exc:
        raise ArchiveDamaged(f"archive {dump}: its checksum file {sha_path(dump).name} is missing") from exc
    actual = sha256_of(dump)
    if actual != recorded or actual != archive.sha256:
        raise ArchiveDamaged(
            f"archive {dump} is damaged: sha256 {actual} differs from the recorded {recorded}. "
            f"The partition {archive.partition} was not dropped; archive it again (hub partitions) or investigate."
        )
    pg_restore = find_tool("pg_restore", major)
    done = _run([str(pg_restore), "-f", os.devnull, str(dump)])
    if done.returncode != 0:
        raise ArchiveDamaged(
            f"archive {dump} does not read to its end ({done.stderr.strip()}); {archive.partition} was not dropped"
        )
    return archive


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
