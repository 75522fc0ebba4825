"""A first import builds an empty table's secondary indexes once, after loading, not row by row.

Keeping five btrees up to date row by row is most of what PostgreSQL's one busy backend spends on
``orders`` during a big first load (COPY of the same 217k rows: 4.6 s with them, 1.6 s without;
docs/benchmarks.md); sorting and building each index once at the end costs a fraction of that, and
PostgreSQL may build it with parallel workers. This is the bulk-loading advice of the PostgreSQL
manual ("Populating a Database"), applied only where it is safe:

- only to a table that is empty when the apply starts, checked under the lock;
- inside the apply's own transaction: a rollback brings the indexes back untouched;
- the primary key and unique indexes stay (the loader's lookups and upserts need them);
- ``DROP INDEX`` holds an ACCESS EXCLUSIVE lock on the table until commit: readers of the (empty)
  table wait for the first import to finish. It is taken under ``lock_timeout``; when someone holds
  the table, the apply goes on with the indexes in place.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import psycopg
from psycopg import sql

from db.ddl_retry import lock_timeout

log = logging.getLogger(__name__)

LOCK_TIMEOUT = "2s"


@dataclass(frozen=True)
class DeferredIndex:
    name: str
    definition: str  # pg_get_indexdef(): the server's own CREATE INDEX statement for it


def secondary_indexes(conn: psycopg.Connection, schema: str, table: str) -> list[DeferredIndex]:
    """Valid, non-unique indexes of the table that back no constraint (partitioned tables: the parent's)."""
    rows = conn.execute(
        """SELECT ic.relname, pg_get_indexdef(i.indexrelid)
             FROM pg_index i
             JOIN pg_class ic ON ic.oid = i.indexrelid
             JOIN pg_class t ON t.oid = i.indrelid
             JOIN pg_namespace n ON n.oid = t.relnamespace
            WHERE n.nspname = %s AND t.relname = %s
              AND NOT i.indisprimary AND NOT i.indisunique AND NOT i.indisexclusion AND i.indisvalid
              AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid)
            ORDER BY ic.relname""",
        (schema, table),
    ).fetchall()
    return [DeferredIndex(name, definition) for name, definition in rows]


def drop_if_empty(conn: psycopg.Connection, schema: str, table: str) -> list[DeferredIndex]:
    """Inside an open transaction: drop the table's secondary indexes if it is empty; return them."""
    indexes = secondary_indexes(conn, schema, table)
    if not indexes:
        return []
    target = sql.Identifier(schema, table)
    try:
        # a savepoint: giving up releases the lock again (and its rollback the lock_timeout)
        with conn.transaction(), lock_timeout(conn, LOCK_TIMEOUT):
            conn.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(target))
            if conn.execute(sql.SQL("SELECT EXISTS (SELECT 1 FROM {})").format(target)).fetchone()[0]:
                raise _NotEmpty
            for ix in indexes:
                conn.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier(schema, ix.name)))
    except _NotEmpty:
        return []
    except psycopg.errors.LockNotAvailable:
        log.info("%s is in use: loading it with its indexes in place", table)
        return []
    log.info("%s is empty: its %d secondary indexes are built after the load", table, len(indexes))
    return indexes


def rebuild(conn: psycopg.Connection, indexes: list[DeferredIndex]) -> None:
    for ix in indexes:
        conn.execute(ix.definition)


class _NotEmpty(Exception):
    pass
