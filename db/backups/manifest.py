"""The JSON manifest beside every backup, and finding backups in a folder by their manifests.

``<db>-<UTC stamp>.dump`` (custom format) or ``<db>-<UTC stamp>.dir/`` (directory format), with
``<name>.manifest.json`` beside it. The manifest is rewritten (atomically, re-read first) as verification
and test restores record their results; a backup without a manifest is not a backup (a killed run's leftover).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime
from pathlib import Path
from typing import Any

from db.sealed import BACKUP, files
from db.sealed.names import OutsideFolder, confine

MANIFEST_SUFFIX = BACKUP.manifest_suffix


class BackupError(Exception):
    """A backup could not be written, verified, restored or removed."""


class BackupDamaged(BackupError):
    """The backup's checksum or full read failed."""


@dataclass
class Manifest:
    file: str  # the dump's name in its folder
    format: str  # custom | directory
    database: str
    schema: str  # the hub's schema: row counts and partitions are of its tables
    server_version: str
    started_at: str  # ISO 8601 UTC
    finished_at: str
    size_bytes: int
    sha256: str
    pg_dump_version: str
    row_counts: dict[str, int] = field(default_factory=dict)  # main tables, in the dump's own snapshot
    partitions: list[str] = field(default_factory=list)
    dump_seconds: float = 0.0
    verified: bool | None = None  # None: not verified yet
    verified_at: str | None = None
    verify_error: str | None = None
    restore_tested: bool | None = None
    restore_tested_at: str | None = None
    restore_seconds: float | None = None
    restore_error: str | None = None

    @property
    def server_major(self) -> int:
        return int(re.match(r"\d+", self.server_version).group(0))

    @property
    def finished(self) -> datetime:
        return datetime.fromisoformat(self.finished_at)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def manifest_path(backup: Path) -> Path:
    return BACKUP.manifest_path(backup)


def write_manifest(backup: Path, manifest: Manifest) -> None:
    files.write_atomic(manifest_path(backup), manifest.to_json())


def update_manifest(backup: Path, **changes: Any) -> Manifest:
    """Record one step's outcome: re-read the manifest as it is on disk *now*, set only ``changes``, write it.

    Verification and a test restore each take minutes and own different fields; re-reading just before
    the write keeps what the other recorded meanwhile (both also run under the db-maintenance lock).
    """
    known = {f.name for f in fields(Manifest)}
    if not set(changes) <= known:
        raise ValueError(f"not manifest fields: {sorted(set(changes) - known)}")
    current = read_manifest(backup)
    for name, value in changes.items():
        setattr(current, name, value)
    write_manifest(backup, current)
    return current


def read_manifest(backup: Path) -> Manifest:
    try:
        return Manifest.from_dict(json.loads(manifest_path(backup).read_text()))
    except (OSError, ValueError, TypeError) as exc:
        raise BackupDamaged(
            f"backup {backup}: its manifest {manifest_path(backup).name} is missing or unreadable"
        ) from exc


def list_backups(directory: Path | None) -> list[tuple[Path, Manifest]]:
    """Every backup of ``directory`` with its manifest, oldest first (hub names only; unreadable ones skipped)."""
    if directory is None or not directory.is_dir():
        return []
    out = []
    for m in directory.glob("*" + MANIFEST_SUFFIX):
        if not BACKUP.owns_manifest(m.name):  # another tool's manifest: not one of the hub's backups
            continue
        backup = BACKUP.sealed_of(m)
        try:
            out.append((backup, read_manifest(backup)))
        except BackupDamaged:
            continue
    return sorted(out, key=lambda pm: pm[1].finished_at)


def resolve(backup: str | Path, directory: Path | None) -> Path:
    """A backup given by name, or by a path, inside ``directory`` (HUB_BACKUP_DIR) and named as the hub names them.

    Nothing outside the folder is accepted (``..`` and symlinks resolved first): a restore runs whatever the
    file holds, and its manifest is a sidecar anyone who can write the file can write too.
    """
    if directory is None:
        raise BackupError(f"no backup folder (HUB_BACKUP_DIR) to find {backup} in")
    try:
        path = confine(backup, directory)
    except OutsideFolder as exc:
        raise BackupError(f"backup {exc}") from None
    if not BACKUP.owns(path.name):
        raise BackupError(f"{path.name} is not a backup the hub wrote (<db>-YYYYMMDDTHHMMSSZ.dump|.dir): refused")
    return path


def require_verified(backup: Path, manifest: Manifest) -> None:
    """Only a hub-named backup whose manifest records a passed verification is handed to pg_restore."""
    if not BACKUP.owns(backup.name):
        raise BackupError(f"{backup.name} is not a backup the hub wrote: refusing to restore it")
    if manifest.verified is not True:
        state = "failed its verification" if manifest.verified is False else "has not been verified"
        raise BackupError(
            f"backup {backup.name} {state}: refusing to restore it (run `hub backups verify {backup.name}` first)"
        )


def of_database(
    backups: list[tuple[Path, Manifest]], database: str, schema: str | None = None
) -> list[tuple[Path, Manifest]]:
    """The backups of one database (and schema): a shared folder may hold other hubs' backups too."""
    return [(p, m) for p, m in backups if m.database == database and (schema is None or m.schema == schema)]


def newest_verified(directory: Path | None) -> datetime | None:
    """When the newest backup that passed verification finished (for `hub status` / alerting), or None."""
    done = [m.finished for _, m in list_backups(directory) if m.verified]
    return max(done, default=None)


def newest_restore_tested(directory: Path | None) -> datetime | None:
    """When the newest backup that passed a test restore finished, or None."""
    done = [m.finished for _, m in list_backups(directory) if m.restore_tested]
    return max(done, default=None)
