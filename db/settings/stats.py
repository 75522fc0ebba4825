"""The settings cache's hit/miss counters summed over every process, for ``hub status``.

Each process has its own cache, so its ``SettingsService.stats()`` dies with it; a status command
reading its own cache would only ever see its own few reads. So each service adds what it counted since
its last flush to one ``sync_state`` row (key ``settings_cache``): at close (and at process exit), and at
most once a ``FLUSH_SECONDS`` on a cache miss (a miss reads the database anyway). A killed process
loses what it counted since its last flush: the totals are a lower bound, which the rate tolerates.

The row lives in ``sync_state`` (the hub's key/value state table, as the customer metrics' last run
does) rather than a table of its own: a counter does not need a migration.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql

STATE_KEY = "settings_cache"
FLUSH_SECONDS = 60.0
COUNTERS = ("hits", "misses", "loads", "load_errors")


@dataclass(frozen=True)
class CacheTotals:
    hits: int
    misses: int
    loads: int
    load_errors: int
    since: datetime | None  # the first flush
    updated_at: datetime | None  # the last flush

    @property
    def reads(self) -> int:
        return self.hits + self.misses

    @property
    def hit_rate(self) -> float | None:
        return self.hits / self.reads if self.reads else None

    def as_dict(self) -> dict[str, Any]:
        rate = self.hit_rate
        return {
            **{c: getattr(self, c) for c in COUNTERS},
            "reads": self.reads,
            "hit_rate": None if rate is None else round(rate, 6),
            "since": self.since.isoformat() if self.since else None,
            "updated_at": self.updated_at.isoformat() if self.updated_at else None,
        }


def _initial(counter: str) -> sql.Composable:
    return sql.SQL("{}::text, {}").format(sql.Literal(counter), sql.Placeholder(counter))


def _added(counter: str) -> sql.Composable:
    # details.<counter> + %(counter)s, a missing one counting as 0
    return sql.SQL("{name}::text, coalesce((s.details->>{name})::bigint, 0) + {value}").format(
        name=sql.Literal(counter), value=sql.Placeholder(counter)
    )


def add_counts(conn: psycopg.Connection, **deltas: int) -> None:
    """Add ``deltas`` (hits, misses, loads, load_errors) to the totals in one atomic upsert."""
    values = {c: int(deltas.get(c, 0)) for c in COUNTERS}
    conn.execute(
        sql.SQL(
            """INSERT INTO sync_state AS s (key, details, updated_at)
               VALUES ({key}, jsonb_build_object({first}, 'since', now()), now())
               ON CONFLICT (key) DO UPDATE SET
                 details = s.details || jsonb_build_object({added}), updated_at = now()"""
        ).format(
            key=sql.Literal(STATE_KEY),
            first=sql.SQL(", ").join(_initial(c) for c in COUNTERS),
            added=sql.SQL(", ").join(_added(c) for c in COUNTERS),
        ),
        values,
    )


def read_totals(conn: psycopg.Connection) -> CacheTotals:
    row = conn.execute("SELECT details, updated_at FROM sync_state WHERE key = %s", (STATE_KEY,)).fetchone()
    details, updated_at = (row[0] or {}, row[1]) if row else ({}, None)
    since = details.get("since")
    return CacheTotals(
        *(int(details.get(c, 0)) for c in COUNTERS),
        since=datetime.fromisoformat(since) if since else None,
        updated_at=updated_at,
    )
