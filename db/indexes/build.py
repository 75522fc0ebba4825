"""The hub's one ``CREATE INDEX CONCURRENTLY``: ``ensure-indexes``, the migration and the split all build here.

A concurrent build that fails — a lock not granted within its ``lock_timeout``, a kill, a unique
violation — leaves an INVALID index of its name behind, and a retried ``CREATE`` of that name then
fails with ``DuplicateTable``. So the builder drops an INVALID index of that name before it starts and
after every failed try (``db.ddl_retry``'s cleanup hook), and builds again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import psycopg
from psycopg import sql

from db.ddl_retry import lock_timeout, retry_on_lock_timeout

log = logging.getLogger(__name__)

BLOCKING_LOCK_TIMEOUT = "500ms"  # ON ONLY / ATTACH: writers queue behind the waiting statement
CONCURRENT_LOCK_TIMEOUT = "30s"  # CONCURRENTLY: its waits do not hold writers up
ATTEMPTS = 5


def index_valid(conn: psycopg.Connection, schema: str, name: str) -> bool | None:
    """True/False: the index ``schema.name`` exists and is (not) valid; None: no such index."""
    row = conn.execute(
        """SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
             JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname = %s""",
        (schema, name),
    ).fetchone()
    return None if row is None else bool(row[0])


def run_ddl(
    conn: psycopg.Connection,
    stmt: sql.Composable,
    *,
    concurrent: bool,
    sleep: Callable[[float], None] = time.sleep,
    cleanup: Callable[[], None] | None = None,
    attempts: int = ATTEMPTS,
) -> None:
    """One autocommit DDL statement under the index lock_timeout (short, or long for CONCURRENTLY), retried."""
    timeout = CONCURRENT_LOCK_TIMEOUT if concurrent else BLOCKING_LOCK_TIMEOUT
    with lock_timeout(conn, timeout):
        retry_on_lock_timeout(
            stmt.as_string(conn)[:80],
            lambda: conn.execute(stmt),
            attempts=attempts,
            sleep=sleep,
            cleanup=cleanup,
            base=0.5,
            cap=30.0,
        )


def drop_if_invalid(
    conn: psycopg.Connection, schema: str, name: str, *, sleep: Callable[[float], None] = time.sleep
) -> bool:
    """``DROP INDEX CONCURRENTLY`` the index when it is INVALID (a failed build's); True if dropped."""
    if index_valid(conn, schema, name) is not False:
        return False
    log.info("dropping the INVALID index %s left by a failed or interrupted build", name)
    stmt = sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(sql.Identifier(schema, name))
    run_ddl(conn, stmt, concurrent=True, sleep=sleep)
    return True


def build_concurrently(
    conn: psycopg.Connection,
    schema: str,
    table: str,
    name: str,
    keys: sql.Composable,
    *,
    unique: bool = False,
    sleep: Callable[[float], None] = time.sleep,
) -> bool:
    """``CREATE [UNIQUE] INDEX CONCURRENTLY name ON schema.table keys``; False if a valid one is there already.

    ``keys``: what follows the table, ``(a, b)`` or ``USING btree (a) WHERE …`` — compiled from a model
    or read from the catalog (``pg_get_indexdef``), never from data. ``conn`` must be autocommit.
    """
    if not conn.autocommit:
        raise ValueError("CREATE INDEX CONCURRENTLY needs an autocommit connection")
    if index_valid(conn, schema, name):
        return False
    drop_if_invalid(conn, schema, name, sleep=sleep)
    stmt = sql.SQL("CREATE {unique}INDEX CONCURRENTLY {name} ON {table} {keys}").format(
        unique=sql.SQL("UNIQUE " if unique else ""),
        name=sql.Identifier(name),
        table=sql.Identifier(schema, table),
        keys=keys,
    )
    run_ddl(conn, stmt, concurrent=True, sleep=sleep, cleanup=lambda: drop_if_invalid(conn, schema, name, sleep=sleep))
    log.info("built %s on %s concurrently", name, table)
    return True
