"""The off-machine copy of a verified backup: ``db.sealed.copy`` (checksum re-read at the destination)."""

from __future__ import annotations

from pathlib import Path

from db.backups.manifest import BackupDamaged, BackupError, Manifest
from db.sealed import BACKUP
from db.sealed.check import Damaged
from db.sealed.copy import copy_sealed


def copy_backup(backup: Path, manifest: Manifest, dest_dir: Path) -> Path:
    """Copy a verified backup and its manifest into ``dest_dir``; returns the copy's path."""
    if not manifest.verified:
        raise BackupError(f"backup {backup.name} is not verified: it is not copied off the machine")
    try:
        return copy_sealed(BACKUP, backup, manifest.sha256, manifest.to_json(), dest_dir)
    except Damaged as exc:
        raise BackupDamaged(str(exc)) from None
