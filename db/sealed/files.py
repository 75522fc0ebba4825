"""Writing a sealed file: 0700 folder, temporary name, 0600 + fsync, rename, the folder's fsync.

A reader (or a restore after a power loss) sees either nothing or the whole file under its final name:
the data is flushed before the rename, and the folder is flushed after it so the rename itself survives.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

from db.sealed.names import PARTIAL_SUFFIX


class NotEnoughSpace(OSError):
    """The folder's disk has less free space than the write needs (plus the reserve)."""


def private_dir(directory: Path) -> Path:
    """Create ``directory`` (0700) if missing; an existing folder's mode is left alone (it may be a share)."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    return directory


def temp_of(final: Path) -> Path:
    return final.with_name(final.name + PARTIAL_SUFFIX)


def discard(path: Path) -> None:
    """Remove a temp file or a directory-format dump's temp folder (callers pass only hub-made temps)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def prepare_temp(final: Path, *, folder: bool = False) -> Path:
    """The temporary name for ``final``, created empty (0600 file or 0700 folder) for a tool to write into."""
    tmp = temp_of(final)
    discard(tmp)
    if folder:
        tmp.mkdir(mode=0o700)
    else:
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600))
    return tmp


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_private(path: Path) -> None:
    """Make a sealed file (or every file of a directory-format dump) 0600 and flush it to disk."""
    files = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
    for f in files:
        os.chmod(f, 0o600)
        fd = os.open(f, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    if path.is_dir():
        os.chmod(path, 0o700)
        fsync_dir(path)


def seal(tmp: Path, final: Path) -> Path:
    """0600 and fsync'd, then the rename that makes it visible, then the folder's fsync (a durable rename)."""
    fsync_private(tmp)
    os.replace(tmp, final)
    fsync_dir(final.parent)
    return final


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` under a unique temporary name, fsync, rename, fsync the folder.

    A reader sees the old or the new file, whole; two writers never write into one temp file (the
    last rename wins, whole).
    """
    tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex[:12]}{PARTIAL_SUFFIX}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_json(path: Path, data: dict[str, Any]) -> None:
    write_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def check_free_space(directory: Path, need_bytes: int, reserve_bytes: int, what: str) -> None:
    """Refuse (NotEnoughSpace) unless ``directory``'s disk has ``need_bytes`` + ``reserve_bytes`` free."""
    free = shutil.disk_usage(directory).free
    if free < need_bytes + reserve_bytes:
        mb = 2**20
        raise NotEnoughSpace(
            f"not enough free disk for {what} in {directory}: needs about {need_bytes / mb:.0f} MB "
            f"+ {reserve_bytes / mb:.0f} MB reserve, {free / mb:.0f} MB free. Nothing was written; "
            "free some space (or move the folder) and run it again."
        )
