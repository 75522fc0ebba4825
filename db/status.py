"""What ``hub status`` reads from the hub's own tables: last runs, open failed snapshots, partition runway.

Plain reads, one query each; judging them (ok / warn / fail) is ``flows/status.py``'s job.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import psycopg

from db.partitions import rollover as partitions
from db.partitions.rollover import Quarter

# Counters of a run as ``hub status`` shows them (columns of snapshot_runs).
RUN_COUNTERS = ("lines", "inserted", "updated", "unchanged", "rejected", "skipped_older", "deleted")


def last_runs(conn: psycopg.Connection) -> list[dict[str, Any]]:
    """The newest ``snapshot_runs`` row of each kind of run: (entity, source, full).

    Source ``api`` is ``import_snapshot`` (full, or changes since a time), ``file`` is ``import_file``,
    ``fetch`` the incremental fetch flows. A run still ``running`` has no ``finished_at``.
    ``superseded_by``: a later successful full run of the entity (of any source), after which the
    mirror holds the shop's state whatever this run would have brought.
    """
    cur = conn.execute(
        """SELECT r.*,
                  (SELECT min(l.id) FROM snapshot_runs l
                    WHERE l.entity = r.entity AND l."full" AND l.status = 'succeeded' AND l.id > r.id) AS superseded_by
             FROM (SELECT DISTINCT ON (entity, source, "full")
                          id, entity, source, "full", status, started_at, finished_at, error, flow_run_id,
                          lines, inserted, updated, unchanged, rejected, skipped_older, deleted
                     FROM snapshot_runs
                    ORDER BY entity, source, "full", id DESC) r
            ORDER BY r.entity, r.source, r.id"""
    )
    names = [d.name for d in cur.description]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def failed_snapshots_open(conn: psycopg.Connection) -> list[dict[str, Any]]:
    """Failed snapshots still open: ``pending`` (the retry flow's), or ``gave_up`` with nothing after.

    A gave-up one is closed by a later successful full snapshot of its entity (from the API or a file):
    the mirror then holds the shop's state again, whatever that failed run would have brought.
    """
    cur = conn.execute(
        """SELECT f.id, f.entity, f."full", f.stage, f.error_class, f.status, f.attempts,
                  f.next_attempt_at, f.created_at, f.updated_at
             FROM failed_snapshots f
            WHERE f.status = 'pending'
               OR (f.status = 'gave_up' AND NOT EXISTS (
                     SELECT 1 FROM snapshot_runs r
                      WHERE r.entity = f.entity AND r."full" AND r.status = 'succeeded'
                        AND r.finished_at > f.updated_at))
            ORDER BY f.id"""
    )
    names = [d.name for d in cur.description]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def partition_runway(conn: psycopg.Connection, now: datetime) -> tuple[bool, int, list[str]]:
    """(current quarter's partition exists, quarters ready past it in a row, the partitions that exist).

    The runway counts consecutive quarters after the current one: a gap ends it, because the first
    missing quarter is where an insert would need a partition created on the spot. A quarter below the
    legacy partition's bound (``hub migrate-partitions`` before ``--split``) is held by that partition:
    present, not missing.
    """
    existing = partitions.existing_partitions(conn)
    covered = partitions.legacy_bound(conn)

    def present(q: Quarter) -> bool:
        return q.name in existing or (covered is not None and q.end <= covered)

    current = Quarter.of(now)
    ahead, q = 0, current.next()
    while present(q):  # ends: the legacy bound is finite, and so are the partitions
        ahead += 1
        q = q.next()
    return present(current), ahead, sorted(existing)
