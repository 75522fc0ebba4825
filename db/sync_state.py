"""Watermarks of the incremental fetches (``sync_state``) and the deletes learned from change logs.

Both run inside the caller's transaction: the fetch flow saves the watermark in the same transaction
as the deletes, right after the loader committed the upserts, so a failure anywhere before leaves the
watermark where it was and the next run redoes the same window (re-applying is a no-op).

Each writing function calls ``guard_write`` first: run by a job that holds its lock, it takes the lock's
write key and fails the caller's transaction (``LockLost``) if the lock's session died.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from db.locks import guard_write
from db.mapping import ENTITIES


@dataclass(frozen=True)
class SyncState:
    key: str
    watermark: datetime | None
    details: dict[str, Any]
    updated_at: datetime | None


def get_state(conn: psycopg.Connection, key: str) -> SyncState | None:
    row = conn.execute("SELECT key, watermark, details, updated_at FROM sync_state WHERE key = %s", (key,)).fetchone()
    return None if row is None else SyncState(row[0], row[1], row[2] or {}, row[3])


def save_watermark(conn: psycopg.Connection, key: str, watermark: datetime, details: dict[str, Any]) -> None:
    """Upsert the watermark; it never moves backwards (an overlapping older run may commit last).

    ``details`` are merged into the stored ones (jsonb ``||``), so a key such as the last horizon
    warning survives later runs that do not mention it.
    """
    guard_write(conn)
    conn.execute(
        """INSERT INTO sync_state (key, watermark, details, updated_at) VALUES (%s, %s, %s, now())
           ON CONFLICT (key) DO UPDATE SET
             watermark = GREATEST(sync_state.watermark, EXCLUDED.watermark),
             details = coalesce(sync_state.details, '{}'::jsonb) || EXCLUDED.details,
             updated_at = now()""",
        (key, watermark, Jsonb(details)),
    )


def newest_changed_at(conn: psycopg.Connection, entity: str) -> datetime | None:
    """The newest ``changed_at`` mirrored for ``entity`` (a first fetch after a snapshot starts here)."""
    table = sql.Identifier(ENTITIES[entity].table)
    return conn.execute(sql.SQL("SELECT max(changed_at) FROM {}").format(table)).fetchone()[0]


def delete_from_change_log(conn: psycopg.Connection, entity: str, deletes: Iterable[tuple[str, datetime]]) -> int:
    """Delete rows (and their children) the change log reports deleted; returns the parents deleted.

    A row is deleted only when its ``changed_at`` is not newer than the delete's ``changeTime``: the
    log keeps just the last change per entity, so a stored row newer than the delete must come from a
    later change (never roll data back). Equal times delete: Shoptet times are whole seconds, and an
    edit and a delete in the same second leave the delete as the last change. Rows already gone are
    no-ops, so a rerun over the same window deletes nothing twice.
    """
    guard_write(conn)
    keys, times = [], []
    for key, when in deletes:
        keys.append(key)
        times.append(when)
    if not keys:
        return 0
    spec = ENTITIES[entity]
    ident = sql.Identifier
    parts = dict(t=ident(spec.table), k=ident(spec.key))
    children = sql.SQL("")
    if spec.child_table:
        # A sibling CTE sees the parent DELETE's RETURNING rows (not its effect on the table): enough here.
        children = sql.SQL(", c AS (DELETE FROM {ct} x USING d WHERE x.{ck} = d.key)").format(
            ct=ident(spec.child_table), ck=ident(spec.child_key)
        )
    row = conn.execute(
        sql.SQL(
            """WITH d AS (
                 DELETE FROM {t} t USING unnest(%s::text[], %s::timestamptz[]) AS g(key, change_time)
                 WHERE t.{k} = g.key AND (t.changed_at IS NULL OR t.changed_at <= g.change_time)
                 RETURNING t.{k} AS key){children}
               SELECT count(*) FROM d"""
        ).format(children=children, **parts),
        (keys, times),
    ).fetchone()
    return row[0]


def add_run_deletes(conn: psycopg.Connection, run_id: int, deleted: int) -> None:
    """Count change-log deletes on the run's row (the loader has already written its counters)."""
    guard_write(conn)
    conn.execute("UPDATE snapshot_runs SET deleted = coalesce(deleted, 0) + %s WHERE id = %s", (deleted, run_id))
