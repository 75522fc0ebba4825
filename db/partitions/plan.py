"""What ``hub partitions`` would do: the quarters to create (runway + data) and the quarters past retention.

Rollover: the current quarter and the next ``runway`` ones, plus every quarter an order was created
in — except archived quarters (the horizon) and quarters already past retention (creating them only
to archive them empty the same run would be churn). Retention: a partition is retired only when its
whole range ends at or before the horizon (``now`` minus ``retention_years``, UTC); 0 years disables it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

import psycopg

from db import clock
from db.dates import DateWindow
from db.partitions import rollover as partitions
from db.partitions.restore import INVALIDATED
from db.partitions.rollover import Quarter


def retention_horizon(now: datetime, years: int) -> datetime | None:
    """``now`` minus ``years`` (29 February → 28 February), UTC; None when retention is off."""
    if years <= 0:
        return None
    now = now.astimezone(UTC)
    try:
        return now.replace(year=now.year - years)
    except ValueError:
        return now.replace(year=now.year - years, day=28)


def runway(now: datetime, quarters: int) -> list[Quarter]:
    q = Quarter.of(now)
    out = [q]
    for _ in range(quarters):
        q = q.next()
        out.append(q)
    return out


@dataclass
class Plan:
    now: datetime
    horizon: datetime | None
    runway: list[Quarter]
    create: list[Quarter] = field(default_factory=list)
    retire: list[Quarter] = field(default_factory=list)
    skipped: list[tuple[Quarter, str]] = field(default_factory=list)  # wanted but not created, and why

    def describe(self) -> list[str]:
        lines = [f"create {q.name} [{q.start:%Y-%m-%d}, {q.end:%Y-%m-%d})" for q in self.create]
        lines += [f"archive, detach and drop {q.name} (ends {q.end:%Y-%m-%d}, horizon {self.horizon:%Y-%m-%d})"
                  for q in self.retire]  # fmt: skip
        lines += [f"skip {q.name}: {why}" for q, why in self.skipped]
        return lines or ["nothing to do"]


def make_plan(
    conn: psycopg.Connection,
    *,
    now: datetime | None = None,
    runway_quarters: int = 2,
    retention_years: int = 2,
    window: DateWindow | None = None,
) -> Plan:
    now = (now or clock.now()).astimezone(UTC)
    window = window or DateWindow.default(now)
    horizon = retention_horizon(now, retention_years)
    ahead = runway(now, runway_quarters)
    plan = Plan(now, horizon, ahead)
    existing = partitions.existing_partitions(conn)
    archived = partitions.archived_quarters(conn)
    legacy = partitions.legacy_bound(conn)
    for q in sorted(set(ahead) | set(partitions.data_quarters(conn))):
        if q.name in existing:
            continue
        if legacy is not None and q.end <= legacy:
            plan.skipped.append((q, f"held by {partitions.LEGACY} (`hub migrate-partitions --split` moves it)"))
        elif q.key in archived:
            plan.skipped.append((q, "archived (beyond retention)"))
        elif horizon is not None and q.end <= horizon:
            plan.skipped.append((q, "past retention"))
        elif not (window.contains(q.start) or window.contains(q.last_moment)):
            plan.skipped.append((q, "outside the accepted dates"))
        else:
            plan.create.append(q)
    if horizon is not None:
        quarters = (partitions.quarter_of_name(n) for n in existing)
        for q in sorted(q for q in quarters if q is not None and q.end <= horizon):
            waiting = _awaiting_rewrite(conn, q)
            if waiting:  # archived now, the stale items would stay for good: imports drop items past retention
                plan.skipped.append(
                    (q, f"{waiting} orders restored with it await their items' rewrite (next snapshot)")
                )
            else:
                plan.retire.append(q)
    return plan


def _awaiting_rewrite(conn: psycopg.Connection, q: Quarter) -> int:
    """Orders of ``q`` whose items a restore-archive brought back as archived and marked for rewriting."""
    return conn.execute(
        "SELECT count(*) FROM orders WHERE created_at >= %s AND created_at < %s AND content_hash = %s",
        (q.start, q.end, INVALIDATED),
    ).fetchone()[0]
