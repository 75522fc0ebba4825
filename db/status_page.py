"""What the hub's health page adds to ``hub status``: freshness per entity, partitions with their archives,
the throughput of recent runs. Plain reads, one query each (``flows/hub_status.py`` renders them)."""

from __future__ import annotations

from typing import Any

import psycopg


def _dicts(cur: psycopg.Cursor) -> list[dict[str, Any]]:
    names = [d.name for d in cur.description]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def entity_freshness(conn: psycopg.Connection) -> list[dict[str, Any]]:
    """Per entity: the newest successful run's end (any source) and the newest successful full one's."""
    return _dicts(
        conn.execute(
            """SELECT entity,
                      max(finished_at) FILTER (WHERE status = 'succeeded') AS last_success,
                      max(finished_at) FILTER (WHERE status = 'succeeded' AND "full") AS last_full
                 FROM snapshot_runs GROUP BY entity ORDER BY entity"""
        )
    )


def archives(conn: psycopg.Connection) -> list[dict[str, Any]]:
    """Every archived quarter of ``order_items``: where its dump is, and whether it was dropped or restored."""
    return _dicts(
        conn.execute(
            """SELECT partition, year, quarter, rows, path, archived_at, dropped_at, restored_at
                 FROM partition_archives ORDER BY year, quarter, id"""
        )
    )


def recent_throughput(conn: psycopg.Connection, limit: int = 30) -> list[dict[str, Any]]:
    """The last ``limit`` finished successful runs: lines applied and seconds taken, oldest first."""
    return _dicts(
        conn.execute(
            """SELECT * FROM (
                   SELECT id, entity, source, "full", lines, started_at, finished_at,
                          extract(epoch FROM finished_at - started_at)::float AS seconds
                     FROM snapshot_runs
                    WHERE status = 'succeeded' AND finished_at IS NOT NULL AND lines IS NOT NULL
                    ORDER BY id DESC LIMIT %s) r
               ORDER BY id""",
            (limit,),
        )
    )


def partition_rows(conn: psycopg.Connection, parent: str = "order_items") -> dict[str, int]:
    """Rows of each partition of ``parent`` without counting them: the statistics' live tuples, which follow
    inserts within seconds, or the planner's estimate when that is higher (after ANALYZE of a restore)."""
    rows = conn.execute(
        """SELECT c.relname, greatest(coalesce(s.n_live_tup, 0), c.reltuples::bigint, 0)
             FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
             LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid
            WHERE i.inhparent = to_regclass(%s)""",
        (parent,),
    ).fetchall()
    return {name: int(n) for name, n in rows}
