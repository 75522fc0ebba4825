"""``hub status``: is the hub healthy, and if not, what needs attention — as a list of independent checks.

Each check is a function ``(StatusContext) -> Check`` with a level (``ok``, ``warn``: needs attention
soon, ``fail``: needs attention now), a one-line detail and its data (JSON-able). One check failing to
run does not stop the others: it reports ``fail`` with the reason. The worst level gives the exit code
(0 ok, 1 warn, 2 fail; the CLI uses 3 when the database itself cannot be read), so cron or a monitor can
alert on it, Nagios-style.

To add a check, write ``def check_x(ctx: StatusContext) -> Check`` in ``flows/status_checks.py`` and append it
to ``CHECKS`` here; the CLI, the JSON and the exit code pick it up.

The hub's own tables are the truth (``snapshot_runs``, ``failed_snapshots``, ``sync_state``,
``job_locks``, the partitions). Prefect adds what only it knows — the limits' state and the last run of
flows that keep no run record of their own — unless ``prefect=False`` (``hub status --no-prefect``).
Prefect's flow runs carry no hub instance: with several hubs on one Prefect server, those last runs
are the server's, whichever hub they ran for.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from db import clock
from db import locks as dblocks
from db.connection import connection
from flows.status_checks import (
    check_backups,
    check_failed_snapshots,
    check_locks,
    check_partition_runway,
    check_runs,
    check_settings_cache,
)
from flows.status_model import EXIT_CODES, EXIT_UNKNOWN, FAIL, LEVELS, OK, SCHEMA, WARN, Check, StatusContext, worst

__all__ = ["EXIT_UNKNOWN", "FAIL", "OK", "WARN", "Check", "Report", "StatusContext", "gather", "worst"]


@dataclass
class Report:
    instance: str
    generated_at: datetime
    checks: list[Check]

    @property
    def level(self) -> str:
        return max((c.level for c in self.checks), key=LEVELS.index, default=OK)

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.level]

    def as_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "generated_at": self.generated_at.isoformat(),
            "instance": self.instance,
            "level": self.level,
            "exit_code": self.exit_code,
            "checks": [asdict(c) for c in self.checks],
        }


# --- all together ---------------------------------------------------------------------------------------

CheckFn = Callable[[StatusContext], Check]
CHECKS: list[tuple[str, CheckFn]] = [
    ("runs", check_runs),
    ("failed_snapshots", check_failed_snapshots),
    ("partition_runway", check_partition_runway),
    ("settings_cache", check_settings_cache),
    ("locks", check_locks),
    ("backups", check_backups),
]


def gather(
    url: str,
    schema: str,
    *,
    prefect: bool = True,
    now: datetime | None = None,
    checks: list[tuple[str, CheckFn]] | None = None,
    backup_dir: Path | None = None,
) -> Report:
    """Run every check. Raises only when the database cannot be read at all (``EXIT_UNKNOWN`` in the CLI)."""
    with connection(url, schema, autocommit=True) as conn:
        instance = dblocks.instance_id(conn)
    ctx = StatusContext(url, schema, (now or clock.now()).astimezone(UTC), prefect, backup_dir)
    results = []
    for name, fn in checks or CHECKS:
        try:
            results.append(fn(ctx))
        except Exception as exc:  # noqa: BLE001 - one broken check must not hide the others
            results.append(Check(name, FAIL, f"could not check: {type(exc).__name__}: {str(exc)[:300]}"))
    return Report(instance, ctx.now, results)
