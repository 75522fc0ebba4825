"""Bookkeeping rows: ``snapshot_runs``, ``snapshot_rejects`` and ``failed_snapshots``."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb


def start_run(
    conn: psycopg.Connection,
    entity: str,
    *,
    source: str,
    full: bool,
    filters: dict | None = None,
    job_id: str | None = None,
    flow_run_id: str | None = None,
) -> int:
    with conn.transaction():
        row = conn.execute(
            """INSERT INTO snapshot_runs (entity, source, "full", filters, job_id, flow_run_id, status)
               VALUES (%s, %s, %s, %s, %s, %s, 'running') RETURNING id""",
            (entity, source, full, Jsonb(filters or {}), job_id, flow_run_id),
        ).fetchone()
    return row[0]


def fail_run(conn: psycopg.Connection, run_id: int, error: str, counters: dict[str, Any] | None = None) -> None:
    c = counters or {}
    with conn.transaction():
        conn.execute(
            """UPDATE snapshot_runs SET status = 'failed', finished_at = now(), error = %s,
                   lines = coalesce(%s, lines), rejected = coalesce(%s, rejected)
               WHERE id = %s""",
            (error[:4000], c.get("lines"), c.get("rejected"), run_id),
        )


def record_rejects(conn: psycopg.Connection, run_id: int, rejects: list[tuple[int, str, str]]) -> None:
    """Rejects are written on their own connection as they occur, so a rolled-back apply keeps them.

    One row per (run, line): a retried apply of the same run finds its rejects already there.
    """
    if not rejects:
        return
    line_nos, reasons, lines = zip(*rejects, strict=True)
    conn.execute(
        """INSERT INTO snapshot_rejects (run_id, line_no, reason, line)
           SELECT %s, * FROM unnest(%s::bigint[], %s::text[], %s::text[])
           ON CONFLICT (run_id, line_no) DO NOTHING""",
        (run_id, list(line_nos), list(reasons), list(lines)),
    )
    if not conn.autocommit:
        conn.commit()


def get_run(conn: psycopg.Connection, run_id: int) -> dict[str, Any]:
    cur = conn.execute("SELECT * FROM snapshot_runs WHERE id = %s", (run_id,))
    row = cur.fetchone()
    if row is None:
        raise KeyError(run_id)
    return dict(zip([d.name for d in cur.description], row, strict=True))


# --- failed snapshots ---------------------------------------------------------------------------------


def record_failed_snapshot(
    conn: psycopg.Connection,
    *,
    entity: str,
    filters: dict | None,
    full: bool,
    job_id: str | None,
    stage: str,
    error: BaseException,
    run_id: int | None,
    next_attempt_at: datetime | None,
) -> int:
    with conn.transaction():
        row = conn.execute(
            """INSERT INTO failed_snapshots (entity, filters, "full", job_id, stage, error_class, error_message,
                   attempts, next_attempt_at, status, run_id)
               VALUES (%s, %s, %s, %s, %s, %s, %s, 0, %s, 'pending', %s) RETURNING id""",
            (
                entity,
                Jsonb(filters or {}),
                full,
                job_id,
                stage,
                type(error).__name__,
                str(error)[:4000],
                next_attempt_at,
                run_id,
            ),
        ).fetchone()
    return row[0]


def due_failed_snapshots(conn: psycopg.Connection, now: datetime, limit: int = 100) -> list[dict[str, Any]]:
    cur = conn.execute(
        """SELECT * FROM failed_snapshots WHERE status = 'pending'
               AND (next_attempt_at IS NULL OR next_attempt_at <= %s)
           ORDER BY id LIMIT %s""",
        (now, limit),
    )
    names = [d.name for d in cur.description]
    return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]


def update_failed_snapshot(conn: psycopg.Connection, fs_id: int, **fields: Any) -> None:
    from psycopg import sql

    if "filters" in fields:
        fields["filters"] = Jsonb(fields["filters"])
    sets = sql.SQL(", ").join(sql.SQL("{} = {}").format(sql.Identifier(k), sql.Placeholder(k)) for k in fields)
    with conn.transaction():
        conn.execute(
            sql.SQL("UPDATE failed_snapshots SET {}, updated_at = now() WHERE id = {}").format(
                sets, sql.Literal(fs_id)
            ),
            fields,
        )


# --- job detail polls (Shoptet's 10-poll cap is per job, across retries and processes) ---------------


def job_detail_polls(conn: psycopg.Connection, job_id: str) -> int:
    """Detail polls already sent for ``job_id``, summed over every run that waited for it."""
    row = conn.execute(
        "SELECT coalesce(sum(job_detail_polls), 0) FROM snapshot_runs WHERE job_id = %s", (job_id,)
    ).fetchone()
    return int(row[0])


def add_job_detail_poll(conn: psycopg.Connection, run_id: int) -> int:
    """Count one more detail poll on the run; returns the run's new count."""
    with conn.transaction():
        row = conn.execute(
            "UPDATE snapshot_runs SET job_detail_polls = job_detail_polls + 1 WHERE id = %s RETURNING job_detail_polls",
            (run_id,),
        ).fetchone()
    if row is None:
        raise KeyError(run_id)
    return int(row[0])
