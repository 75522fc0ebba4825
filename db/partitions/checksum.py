"""(rows, checksum) of an ``order_items``-shaped table: what the split's verify, the archives and retention compare."""

from __future__ import annotations

import psycopg
from psycopg import sql

from models.tables import metadata


def checksum(conn: psycopg.Connection, table: str, where: sql.Composable = sql.SQL("TRUE")) -> tuple[int, int]:
    """(rows, order-independent checksum of every model column) of ``table`` (the rows matching ``where``)."""
    cols = sql.SQL(", ").join(sql.Identifier(c.name) for c in metadata.tables["order_items"].columns)
    row = conn.execute(
        sql.SQL(
            "SELECT count(*), coalesce(sum(hashtextextended(t::text, 0)::numeric), 0) "
            "FROM (SELECT {} FROM {} WHERE {}) t"
        ).format(cols, sql.Identifier(table), where)
    ).fetchone()
    return int(row[0]), int(row[1])
