"""The off-machine copy (``HUB_BACKUP_COPY_DIR``, e.g. a mounted network share).

Copied under a temporary name, fsync'd, its SHA-256 re-read *at the destination* (a share can
corrupt silently), then renamed; the manifest follows the same way. Only verified backups are copied.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from db import pg_tools
from db.backups.manifest import (
    PARTIAL_SUFFIX,
    BackupDamaged,
    BackupError,
    Manifest,
    fsync_private,
    write_manifest,
)


def copy_backup(backup: Path, manifest: Manifest, dest_dir: Path) -> Path:
    """Copy a verified backup and its manifest into ``dest_dir``; returns the copy's path."""
    if not manifest.verified:
        raise BackupError(f"backup {backup.name} is not verified: it is not copied off the machine")
    dest_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    final = dest_dir / backup.name
    tmp = dest_dir / (backup.name + PARTIAL_SUFFIX)
    shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)
    if backup.is_dir():
        shutil.copytree(backup, tmp)
    else:
        shutil.copyfile(backup, tmp)
    fsync_private(tmp)
    actual = pg_tools.sha256_of(tmp)
    if actual != manifest.sha256:
        shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)
        raise BackupDamaged(
            f"the copy of {backup.name} in {dest_dir} has sha256 {actual}, not {manifest.sha256}: it was removed"
        )
    if final.is_dir():
        shutil.rmtree(final)
    os.replace(tmp, final)
    write_manifest(final, manifest)
    return final
