"""The vocabulary of ``hub status``: levels, one ``Check``, what a check reads (``StatusContext``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

OK, WARN, FAIL = "ok", "warn", "fail"
LEVELS = (OK, WARN, FAIL)
EXIT_CODES = {OK: 0, WARN: 1, FAIL: 2}
EXIT_UNKNOWN = 3
SCHEMA = "hub-status/1"  # bump when a key of the JSON changes meaning or goes away

# A run still "running" after this long: its process died without recording the end.
STUCK_AFTER = timedelta(hours=6)
# A pending failed snapshot not retried this long after it was due: the hourly retry flow is not running.
RETRY_OVERDUE = timedelta(hours=2)
# Flows that keep no run record in the hub's tables: their last run comes from Prefect.
PREFECT_FLOWS = (
    "recalculate-customer-metrics",
    "retry-failed-snapshots",
    "partition-maintenance",
    "ensure-indexes",
    "restore-partition-archive",
    "forget-person",
)


@dataclass
class Check:
    name: str
    level: str
    detail: str
    data: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.level not in LEVELS:
            raise ValueError(f"level must be one of {LEVELS}, not {self.level!r}")


@dataclass(frozen=True)
class StatusContext:
    url: str
    schema: str
    now: datetime
    prefect: bool  # ask the Prefect API (limits, flow runs); False: the database only
    backup_dir: Path | None = None  # where the nightly backups are (HUB_BACKUP_DIR)


def worst(levels: list[str]) -> str:
    return max(levels, key=LEVELS.index, default=OK)


def _iso(ts: datetime | None) -> str | None:
    return ts.isoformat() if ts else None


def _ago(now: datetime, ts: datetime | None) -> str:
    if ts is None:
        return "never"
    s = max((now - ts).total_seconds(), 0)
    return f"{s / 86400:.1f} d ago" if s >= 86400 else f"{s / 3600:.1f} h ago" if s >= 3600 else f"{s / 60:.0f} min ago"
