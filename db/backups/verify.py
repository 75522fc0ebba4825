"""Is the backup readable to its end? Checksum first, then a full read with ``pg_restore -f /dev/null``.

``pg_restore --list`` reads only the table of contents at the front: it passes on a 60 %-truncated
dump. Decompressing every block is the read that fails on it. The outcome goes into the manifest.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from db import clock
from db.backups.manifest import BackupDamaged, Manifest, read_manifest, update_manifest
from db.sealed import check


def check_checksum(backup: Path, manifest: Manifest) -> None:
    try:
        check.check_checksum(backup, manifest.sha256)
    except check.Damaged as exc:
        raise BackupDamaged(f"backup {exc}") from None


def full_read(backup: Path, manifest: Manifest) -> None:
    try:
        check.full_read(backup, manifest.server_major)
    except check.Damaged as exc:
        raise BackupDamaged(f"backup {exc}") from None


def verify_backup(backup: Path, *, record: bool = True) -> Manifest:
    """Checksum and full read; the result is recorded in the manifest. Raises BackupDamaged."""
    manifest = read_manifest(backup)
    error = None
    try:
        check_checksum(backup, manifest)
        full_read(backup, manifest)
    except BackupDamaged as exc:
        error = str(exc)
    outcome = {"verified": error is None, "verify_error": error, "verified_at": clock.now().isoformat()}
    if record:
        manifest = update_manifest(backup, **outcome)
    else:
        manifest = replace(manifest, **outcome)
    if error:
        raise BackupDamaged(error)
    return manifest
