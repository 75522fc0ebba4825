"""Which backups to remove: older than 30 days, but never one of the newest 7 verified, nor the newest
restore-tested, of each database.

Decisions come from the manifests' dates (not file mtimes, which a copy may reset), so a folder
copied elsewhere keeps its history. Nothing is removed while the folder holds no verified backup at
all: then the old ones may be all there is. Leftovers of interrupted runs (``*.partial``, or a dump
without a manifest) older than a day are removed too. Only names the hub writes (``db.sealed.names``:
``<db>-YYYYMMDDTHHMMSSZ[-n].dump|.dir``, their manifests and temps) are ever considered: the folder may
be a share, or ``HUB_HOME`` itself, holding other people's files and the hub's own ``pg/`` and ``run/``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from db import clock
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
    database: str | None = None  # None: a leftover, which has no manifest

    def row(self) -> dict:
        return {
            "backup": self.path.name,
            "database": self.database,
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
    """A keep/remove decision with its reason for each backup, newest first.

    Each database (and schema) is decided on its own: in a shared folder another hub's fresh backups
    never push this one's out. Within one, the newest restore-tested backup always stays — the last one
    known to restore — and so do the newest ``keep_verified`` verified ones.
    """
    now = now or clock.now()
    groups: dict[tuple[str, str], list[tuple[Path, Manifest]]] = {}
    for pm in sorted(backups, key=lambda pm: pm[1].finished_at, reverse=True):
        groups.setdefault((pm[1].database, pm[1].schema), []).append(pm)
    out = [d for group in groups.values() for d in _plan_one(group, now, max_age_days, keep_verified)]
    return sorted(out, key=lambda d: d.finished_at, reverse=True)


def _plan_one(
    newest_first: list[tuple[Path, Manifest]], now: datetime, max_age_days: int, keep_verified: int
) -> list[Decision]:
    """The decisions for the backups of one database and schema."""
    protected = [p for p, m in newest_first if m.verified][: max(1, keep_verified)]
    tested = next((p for p, m in newest_first if m.restore_tested), None)
    out = []
    for path, m in newest_first:
        age, of = now - m.finished, f"of {m.database} ({m.schema})"
        remove = False
        if path == tested:
            why = f"the newest restore-tested backup {of}"
        elif path in protected:
            why = (
                f"the newest verified backup {of}"
                if path == protected[0]
                else f"one of the newest {keep_verified} verified"
            )
        elif not protected:
            why = f"no verified backup {of} exists: none of its backups is removed"
        elif age > timedelta(days=max_age_days):
            remove, why = True, f"{age.days} days old (> {max_age_days})"
        else:
            why = f"{age.days} days old (<= {max_age_days})"
        out.append(Decision(path, m.finished_at, m.size_bytes, m.verified, remove, why, m.database))
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
