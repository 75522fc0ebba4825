"""The names the hub gives the files it keeps, per kind: what housekeeping may ever touch.

A file is the hub's only if its name matches its kind's pattern exactly; a manifest is that name plus
the kind's manifest suffix; a temporary file is either of those plus ``.partial`` (a manifest's temp also
carries a random infix, so two writers never share one). Anything else in a folder — another team's dump,
a photo folder, the embedded cluster's ``pg/`` — is never the hub's, whatever its age.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

PARTIAL_SUFFIX = ".partial"
STAMP = "%Y%m%dT%H%M%SZ"
_PREFIX = r"[A-Za-z0-9_][A-Za-z0-9_-]{0,62}"
_STAMP = r"\d{8}T\d{6}Z"
_TEMP_INFIX = re.compile(r"\.[0-9a-f]{8,32}$")


def safe_prefix(name: str) -> str:
    """A database or table name as the leading part of a file name (the manifest keeps the real name)."""
    cleaned = re.sub(r"[^A-Za-z0-9_-]", "_", name)[:63]
    return cleaned if cleaned and cleaned[0] not in "-" else f"_{cleaned}"[:63]


@dataclass(frozen=True)
class Kind:
    name: str  # backup | archive
    extensions: tuple[str, ...]  # the file's (or folder's) extensions, e.g. (".dump", ".dir")
    manifest_suffix: str
    folder_extensions: tuple[str, ...] = ()  # extensions that are folders (directory-format dumps)

    @property
    def pattern(self) -> re.Pattern[str]:
        ext = "|".join(re.escape(e) for e in self.extensions)
        return re.compile(rf"^(?P<prefix>{_PREFIX})-(?P<stamp>{_STAMP})(?:-(?P<n>[1-9][0-9]{{0,5}}))?(?:{ext})$")

    def owns(self, name: str) -> bool:
        """``name`` is a sealed file (or folder) of this kind."""
        return self.pattern.match(name) is not None

    def owns_manifest(self, name: str) -> bool:
        return name.endswith(self.manifest_suffix) and self.owns(name[: -len(self.manifest_suffix)])

    def owns_temp(self, name: str) -> bool:
        """``name`` is a temporary file of this kind: a sealed file's or a manifest's, plus ``.partial``."""
        if not name.endswith(PARTIAL_SUFFIX):
            return False
        base = name[: -len(PARTIAL_SUFFIX)]
        return self.owns(base) or self.owns_manifest(base) or self.owns_manifest(_TEMP_INFIX.sub("", base))

    def may_be_folder(self, name: str) -> bool:
        """Only a directory-format dump (or its temp) is a folder the hub may remove whole."""
        base = name.removesuffix(PARTIAL_SUFFIX)
        return bool(self.folder_extensions) and self.owns(base) and base.endswith(self.folder_extensions)

    def manifest_path(self, path: Path) -> Path:
        return path.with_name(path.name + self.manifest_suffix)

    def sealed_of(self, manifest: Path) -> Path:
        return manifest.with_name(manifest.name[: -len(self.manifest_suffix)])

    def new_path(self, directory: Path, prefix: str, when: datetime, extension: str) -> Path:
        """A name nobody has used in ``directory``: two files within one second get ``-2``, ``-3`` …"""
        if extension not in self.extensions:
            raise ValueError(f"{extension!r} is not a {self.name} extension ({', '.join(self.extensions)})")
        stem = f"{safe_prefix(prefix)}-{when:{STAMP}}"
        n = 1
        while True:
            path = directory / (f"{stem}{extension}" if n == 1 else f"{stem}-{n}{extension}")
            taken = (path, self.manifest_path(path), path.with_name(path.name + PARTIAL_SUFFIX))
            if not any(p.exists() for p in taken):
                return path
            n += 1


BACKUP = Kind("backup", (".dump", ".dir"), ".manifest.json", folder_extensions=(".dir",))
# Archives end in .archive and their manifests in .json: neither matches a backup's names, so a backup
# folder that also holds archives (HUB_ARCHIVE_DIR = HUB_BACKUP_DIR) never mistakes one for the other.
ARCHIVE = Kind("archive", (".archive",), ".json")
KINDS = (BACKUP, ARCHIVE)


class OutsideFolder(ValueError):
    """A path parameter that leads outside the folder it must stay in (``..``, a symlink, an absolute path)."""


def confine(given: str | Path, root: Path) -> Path:
    """``given`` — a name in ``root``, or a path — as an existing path inside ``root``, resolved.

    ``..`` and symlinks are followed before the check, so nothing outside ``root`` gets through: a restore
    runs whatever SQL the file holds ("restoring a dump causes the destination to execute arbitrary code
    of the source superusers' choice", PostgreSQL docs), and only the hub writes into its own folders.
    """
    root_real = root.resolve()
    p = Path(given)
    tried = [p.resolve()] if p.is_absolute() else [(root / p).resolve(), p.resolve()]
    inside = [r for r in tried if r.is_relative_to(root_real)]
    if not inside:
        raise OutsideFolder(f"{given} is outside {root}: only files in that folder are accepted")
    for r in inside:
        if r.exists() or any(r.with_name(r.name + k.manifest_suffix).exists() for k in KINDS):
            return r
    raise OutsideFolder(f"no file {given} in {root}")
