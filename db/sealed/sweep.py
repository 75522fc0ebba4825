"""Leftovers of killed runs in a folder the hub writes sealed files into, and removing them safely.

Only names of the given kinds are ever looked at: a temporary name (``….partial``) older than the grace
period, and — where the kind allows it — a sealed file whose manifest was never written. Nothing else is
touched, whatever its age; a folder is removed whole only when it is a directory-format dump's own name.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from db import pg_tools
from db.sealed.names import Kind

GRACE = timedelta(days=1)


@dataclass(frozen=True)
class Leftover:
    path: Path
    kind: Kind
    mtime: datetime
    size_bytes: int
    reason: str


def leftovers(
    directory: Path, kind: Kind, now: datetime | None = None, *, orphans: bool = False, grace: timedelta = GRACE
) -> list[Leftover]:
    """Temporary files of ``kind`` (and, with ``orphans``, sealed files without a manifest) older than ``grace``."""
    now = now or datetime.now(UTC)  # the wall clock on purpose: it is compared with the files' mtimes
    out: list[Leftover] = []
    try:
        entries = sorted(directory.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return out
    for p in entries:
        if kind.owns_temp(p.name):
            reason = "temporary file of an interrupted run"
        elif orphans and kind.owns(p.name) and not kind.manifest_path(p).exists():
            reason = "dump of an interrupted run (its manifest was never written)"
        else:
            continue
        if p.is_symlink() or (p.is_dir() and not kind.may_be_folder(p.name)):
            continue  # a link, or a folder under a file's name: not something the hub wrote
        info = p.lstat()
        mtime = datetime.fromtimestamp(info.st_mtime, UTC)
        if now - mtime > grace:
            out.append(Leftover(p, kind, mtime, pg_tools.size_of(p), reason))
    return out


def remove(kind: Kind, path: Path) -> None:
    """Remove a sealed file of ``kind`` (or its temp) and its manifest; refuses any other name."""
    name = path.name
    if not (kind.owns(name) or kind.owns_temp(name)):
        raise ValueError(f"refusing to remove {path}: not a {kind.name} name the hub writes")
    if path.is_dir() and not path.is_symlink():
        if not kind.may_be_folder(name):
            raise ValueError(f"refusing to remove the folder {path}: only a directory-format dump is one")
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
    if kind.owns(name):
        kind.manifest_path(path).unlink(missing_ok=True)


def clean(
    directory: Path, kind: Kind, now: datetime | None = None, *, orphans: bool = False, grace: timedelta = GRACE
) -> list[Leftover]:
    """Remove the leftovers ``leftovers`` finds; returns what was removed."""
    found = leftovers(directory, kind, now, orphans=orphans, grace=grace)
    for x in found:
        remove(kind, x.path)
    return found
