"""Which backups to remove: older than 30 days, but never one of the newest 7 verified.

Decisions come from the manifests' dates (not file mtimes, which a copy may reset), so a folder
copied elsewhere keeps its history. Nothing is removed while the folder holds no verified backup at
all: then the old ones may be all there is. Leftovers of interrupted runs (``*.partial``, or a dump
without a manifest) older than a day are removed too. Only names the hub writes (``db.sealed.names``:
``<db>-YYYYMMDDTHHMMSSZ[-n].dump|.dir``, their manifests and temps) are ever considered: the folder may
be a share, or ``HUB_HOME`` itself, holding other people's files and the hub's own ``pg/`` and ``run/``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from db.backups.manifest import Manifest, list_backups
from db.sealed import BACKUP, sweep

MAX_AGE_DAYS = 30
KEEP_VERIFIED = 7
LEFTOVER_AGE = sweep.GRACE


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
    """Files of interrupted runs: the hub's temporary names, and its dumps whose manifest was never written."""
    return [
        Decision(x.path, x.mtime.isoformat(), x.size_bytes, None, True, f"leftover: {x.reason}")
        for x in sweep.leftovers(directory, BACKUP, now, orphans=True, grace=LEFTOVER_AGE)
    ]


def remove(decision: Decision) -> None:
    sweep.remove(BACKUP, decision.path)  # refuses any name the hub does not write


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
