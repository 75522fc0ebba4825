"""Is the backup readable to its end? Checksum first, then a full read with ``pg_restore -f /dev/null``.

``pg_restore --list`` reads only the table of contents at the front: it passes on a 60 %-truncated
dump. Decompressing every block is the read that fails on it. The outcome goes into the manifest.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

from db import pg_tools
from db.backups.manifest import BackupDamaged, Manifest, read_manifest, write_manifest


def check_checksum(backup: Path, manifest: Manifest) -> None:
    if not backup.exists():
        raise BackupDamaged(f"backup {backup} does not exist (its manifest does)")
    actual = pg_tools.sha256_of(backup)
    if actual != manifest.sha256:
        raise BackupDamaged(
            f"backup {backup.name} is damaged: sha256 {actual} differs from the recorded {manifest.sha256}"
        )


def full_read(backup: Path, manifest: Manifest) -> None:
    pg_restore = pg_tools.find_tool("pg_restore", manifest.server_major)
    done = pg_tools.run([str(pg_restore), "-f", os.devnull, str(backup)])
    if done.returncode != 0:
        raise BackupDamaged(f"backup {backup.name} does not read to its end: {done.stderr.strip()}")


def verify_backup(backup: Path, *, record: bool = True) -> Manifest:
    """Checksum and full read; the result is recorded in the manifest. Raises BackupDamaged."""
    manifest = read_manifest(backup)
    error = None
    try:
        check_checksum(backup, manifest)
        full_read(backup, manifest)
    except BackupDamaged as exc:
        error = str(exc)
    manifest.verified, manifest.verify_error = error is None, error
    manifest.verified_at = datetime.now(UTC).isoformat()
    if record:
        write_manifest(backup, manifest)
    if error:
        raise BackupDamaged(error)
    return manifest
