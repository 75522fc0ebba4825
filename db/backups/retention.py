"""Which backups to remove: older than 30 days, but never one of the newest 7 verified.

Decisions come from the manifests' dates (not file mtimes, which a copy may reset), so a folder
copied elsewhere keeps its history. Nothing is removed while the folder holds no verified backup at
all: then the old ones may be all there is. Leftovers of interrupted runs (``*.partial``, or a dump
without a manifest) older than a day are removed too.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from db import pg_tools
from db.backups.manifest import MANIFEST_SUFFIX, Manifest, list_backups, manifest_path
from db.sealed.names import PARTIAL_SUFFIX

MAX_AGE_DAYS = 30
KEEP_VERIFIED = 7
LEFTOVER_AGE = timedelta(days=1)


@dataclass(frozen=True)
class Decision:
    path: Path
    finished_at: str
    size_bytes: int
    verified: bool | None
    remove: bool
    reason: str

    def row(self) -> dict:
        return {
            "backup": self.path.name,
            "finished_at": self.finished_at,
            "size_mb": round(self.size_bytes / 2**20, 2),
            "verified": self.verified,
            "decision": "remove" if self.remove else "keep",
            "reason": self.reason,
        }


def plan(
    backups: list[tuple[Path, Manifest]],
    now: datetime | None = None,
    *,
    max_age_days: int = MAX_AGE_DAYS,
    keep_verified: int = KEEP_VERIFIED,
) -> list[Decision]:
    """A keep/remove decision with its reason for each backup, newest first."""
    now = now or datetime.now(UTC)
    newest_first = sorted(backups, key=lambda pm: pm[1].finished_at, reverse=True)
    protected = [p for p, m in newest_first if m.verified][: max(1, keep_verified)]
    out = []
    for path, m in newest_first:
        age = now - m.finished
        if path in protected:
            why = (
                "the newest verified backup" if path == protected[0] else f"one of the newest {keep_verified} verified"
            )
            remove = False
        elif not protected:
            remove, why = False, "no verified backup exists: nothing is removed"
        elif age > timedelta(days=max_age_days):
            remove, why = True, f"{age.days} days old (> {max_age_days})"
        else:
            remove, why = False, f"{age.days} days old (<= {max_age_days})"
        out.append(Decision(path, m.finished_at, m.size_bytes, m.verified, remove, why))
    return out


def leftovers(directory: Path, now: datetime | None = None) -> list[Decision]:
    """Files of interrupted runs: temporary names, and dumps whose manifest was never written."""
    now = now or datetime.now(UTC)
    out = []
    if not directory.is_dir():
        return out
    for p in directory.iterdir():
        orphan = not p.name.endswith(MANIFEST_SUFFIX) and not manifest_path(p).exists()
        if not (p.name.endswith(PARTIAL_SUFFIX) or orphan):
            continue
        mtime = datetime.fromtimestamp(p.stat().st_mtime, UTC)
        if now - mtime > LEFTOVER_AGE:
            out.append(
                Decision(p, mtime.isoformat(), pg_tools.size_of(p), None, True, "leftover of an interrupted run")
            )
    return out


def remove(decision: Decision) -> None:
    p = decision.path
    if p.is_dir():
        shutil.rmtree(p)
    else:
        p.unlink(missing_ok=True)
    manifest_path(p).unlink(missing_ok=True)


def prune(
    directory: Path, *, dry_run: bool = False, now: datetime | None = None, keep_verified: int = KEEP_VERIFIED
) -> list[Decision]:
    """Apply the retention to ``directory`` (or, with ``dry_run``, only decide). Returns every decision."""
    decisions = plan(list_backups(directory), now, keep_verified=keep_verified) + leftovers(directory, now)
    if not dry_run:
        for d in decisions:
            if d.remove:
                remove(d)
    return decisions
