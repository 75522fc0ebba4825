"""Lines the table already holds byte for byte, found by their content hash before they are parsed.

A nightly full snapshot is ~97 % lines identical to the stored rows; parsing and mapping each of them
(50 µs a line) was what bounded the re-apply (docs/benchmarks.md, issue 18 §2). ``content_hash`` is the
sha256 of the line's bytes (``db/mapping_values.py``), so the reader hashes each block's lines (4 µs a
line) and looks the hashes up in one query per block (``WHERE content_hash = ANY(…)``, an index probe
each on ``ix_orders_content_hash``); the worker then skips the lines found and sends back only their
key and hash. The apply confirms every skipped line inside its transaction (``confirm_sql``: the row
of that key still has that hash) before it counts it unchanged and records its key as seen; a line not
confirmed is parsed after all.

The lookup runs on a connection of its own (the reader thread's), so it sees the rows committed before
the apply — hence the confirmation. Erased rows (``db/forget.py``: content_hash ``erased``) and orders
a restored archive invalidated (``db/partitions/restore.py``: ``''``) hold no line's hash: never skipped.

Used only where it cannot cost a sequential scan per block: a valid index whose first column is
``content_hash`` on the entity's table, and a table that holds rows at all (a first load skips nothing).
"""

from __future__ import annotations

import psycopg
from psycopg import sql

from db.mapping import EntitySpec
from db.mapping_values import content_hash


def usable(conn: psycopg.Connection, schema: str, spec: EntitySpec) -> bool:
    """A valid, whole-table index leads with content_hash on the entity's table, and the table has rows."""
    indexed = conn.execute(
        """SELECT EXISTS (
             SELECT 1 FROM pg_index i
               JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
              WHERE i.indrelid = to_regclass(format('%%I.%%I', %s::text, %s::text))
                AND a.attname = 'content_hash' AND i.indisvalid AND i.indpred IS NULL)""",
        (schema, spec.table),
    ).fetchone()[0]
    if not indexed:
        return False
    return conn.execute(sql.SQL("SELECT EXISTS (SELECT 1 FROM {})").format(sql.Identifier(spec.table))).fetchone()[0]


def line_hashes(block: bytes) -> list[str]:
    """The content hash of each non-blank line of a block (lines cut and stripped as ``parse._lines`` does)."""
    return [content_hash(s) for line in block.split(b"\n") if (s := line.strip())]


def lookup_sql(spec: EntitySpec) -> sql.Composed:
    return sql.SQL("SELECT content_hash, {k} FROM {t} WHERE content_hash = ANY(%s)").format(
        k=sql.Identifier(spec.key), t=sql.Identifier(spec.table)
    )


def confirm_sql(spec: EntitySpec, *, created: bool) -> sql.Composed:
    """The skipped lines (key, hash) whose row still has that hash: key, changed_at[, created_at]."""
    return sql.SQL(
        "SELECT s.k, t.changed_at, {c} FROM unnest(%s::text[], %s::text[]) AS s(k, h) "
        "JOIN {t} t ON t.{k} = s.k AND t.content_hash = s.h"
    ).format(
        k=sql.Identifier(spec.key),
        t=sql.Identifier(spec.table),
        c=sql.SQL("t.{}").format(sql.Identifier("created_at")) if created else sql.SQL("NULL"),
    )


class KnownHashes:
    """``known(block)``: {content hash: key} of the block's lines whose hash a stored row has.

    On a connection of its own (autocommit): it is called from the reader thread, while the apply's
    transaction runs on the main connection.
    """

    def __init__(self, conn: psycopg.Connection, spec: EntitySpec) -> None:
        self.conn, self.query = conn, lookup_sql(spec)

    def __call__(self, block: bytes) -> dict[str, str]:
        hashes = line_hashes(block)
        if not hashes:
            return {}
        return dict(self.conn.execute(self.query, (hashes,)).fetchall())
