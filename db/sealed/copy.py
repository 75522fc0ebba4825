"""The off-machine copy (``HUB_BACKUP_COPY_DIR``, e.g. a mounted share), one subfolder per hub instance.

Copied under a temporary name, fsync'd, its SHA-256 re-read *at the destination* (a share can corrupt
silently), then renamed; the manifest follows atomically. Several hubs can share one copy dir: each
writes, and prunes, only its own ``hub-<instance id>/`` subfolder, never the share's root.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from db import pg_tools
from db.sealed import files
from db.sealed.check import Damaged
from db.sealed.names import Kind


def instance_dir(copy_root: Path, instance: str) -> Path:
    """This hub instance's subfolder of a shared copy dir."""
    if not instance or not instance.isalnum():
        raise ValueError(f"instance id {instance!r}: expected the short id of db.locks.instance_id")
    return copy_root / f"hub-{instance}"


def copy_sealed(kind: Kind, src: Path, sha256: str, manifest_text: str, dest_dir: Path) -> Path:
    """Copy a sealed file (or dump folder) and its manifest into ``dest_dir``; returns the copy's path."""
    if not kind.owns(src.name):
        raise ValueError(f"{src.name} is not a {kind.name} name the hub writes: not copied")
    files.private_dir(dest_dir)
    final = dest_dir / src.name
    tmp = files.temp_of(final)
    files.discard(tmp)
    if src.is_dir():
        shutil.copytree(src, tmp)
    else:
        shutil.copyfile(src, tmp)
    files.fsync_private(tmp)
    actual = pg_tools.sha256_of(tmp)
    if actual != sha256:
        files.discard(tmp)
        raise Damaged(f"the copy of {src.name} in {dest_dir} has sha256 {actual}, not {sha256}: it was removed")
    if final.is_dir():
        shutil.rmtree(final)  # a hub-named dump folder (kind.owns checked above): an earlier copy of it
    os.replace(tmp, final)
    files.fsync_dir(dest_dir)
    files.write_atomic(kind.manifest_path(final), manifest_text)
    return final
