"""The pre-partitioning ``order_items`` (one plain table) made from a migrated database: for tests and benchmarks.

Older hub schemas had ``order_items`` as a plain table keyed by ``(order_code, item_id)``; this turns a
freshly migrated database back into that layout, rows included, so ``hub migrate-partitions`` has
something to migrate. A development tool: it takes ACCESS EXCLUSIVE on ``order_items`` for the copy.
"""

from __future__ import annotations

import psycopg
from psycopg import sql

from db.partitions.migration import MigrationError, state
from db.partitions.rollover import PARENT

OLD_TABLE = "order_items_plain"


def make_legacy_order_items(conn: psycopg.Connection) -> int:
    """Replace the partitioned ``order_items`` by a plain table with the same rows; the rows copied."""
    if state(conn) != "partitioned":
        raise MigrationError("order_items is not the partitioned table of a migrated database: nothing converted")
    t, plain = sql.Identifier(PARENT), sql.Identifier(OLD_TABLE)
    with conn.transaction():
        conn.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(t))
        conn.execute(sql.SQL("CREATE TABLE {} (LIKE {} INCLUDING DEFAULTS)").format(plain, t))
        copied = conn.execute(sql.SQL("INSERT INTO {} SELECT * FROM {}").format(plain, t)).rowcount
        had = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(t)).fetchone()[0]
        if copied != had:  # verified before the partitioned table is dropped
            raise MigrationError(f"copied {copied} of {had} rows: nothing converted")
        conn.execute(sql.SQL("DROP TABLE {}").format(t))
        conn.execute(sql.SQL("ALTER TABLE {} RENAME TO {}").format(plain, t))
        conn.execute(
            sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} PRIMARY KEY ({}, {})").format(
                t, sql.Identifier("order_items_pkey"), sql.Identifier("order_code"), sql.Identifier("item_id")
            )
        )
        conn.execute(
            sql.SQL("CREATE INDEX {} ON {} ({})").format(
                sql.Identifier("ix_order_items_product_guid"), t, sql.Identifier("product_guid")
            )
        )
    return copied
