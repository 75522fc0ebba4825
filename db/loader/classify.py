"""Stage 3, classify: each mapped line against the stored row of its key — new, changed, unchanged, older.

Never roll data back: a line whose changeTime is older than the stored row's is skipped. A line with
the stored row's content hash is unchanged. Rows of one batch are compared with the table, so a key
repeated later in the file is classified against its own earlier line, which the transaction has
already written: ``batches`` cuts a chunk where a key repeats.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import psycopg
from psycopg import sql

from db.loader.parse import Line
from db.mapping import EntitySpec


@dataclass
class Classified:
    new: list[Line] = field(default_factory=list)
    changed: list[Line] = field(default_factory=list)  # newer-or-equal changeTime, other content
    unchanged: int = 0
    older: int = 0


def lookup_sql(spec: EntitySpec) -> sql.Composed:
    return sql.SQL("SELECT {k}, changed_at, content_hash FROM {t} WHERE {k} = ANY(%s)").format(
        k=sql.Identifier(spec.key), t=sql.Identifier(spec.table)
    )


def any_stored_sql(spec: EntitySpec) -> sql.Composed:
    return sql.SQL("SELECT EXISTS (SELECT 1 FROM {t} WHERE {k} = ANY(%s))").format(
        k=sql.Identifier(spec.key), t=sql.Identifier(spec.table)
    )


def none_stored(conn: psycopg.Connection, spec: EntitySpec, keys: list[str]) -> bool:
    """No key of ``keys`` is in the table yet (a first import's chunk)."""
    return not conn.execute(any_stored_sql(spec), (keys,)).fetchone()[0]


def classify(conn: psycopg.Connection, spec: EntitySpec, batch: list[Line]) -> Classified:
    stored = {r[0]: (r[1], r[2]) for r in conn.execute(lookup_sql(spec), ([x.key for x in batch],))}
    out = Classified()
    for x in batch:
        s = stored.get(x.key)
        if s is None:
            out.new.append(x)
        elif s[0] is not None and (x.changed is None or x.changed < s[0]):
            out.older += 1
        elif s[1] == x.hash:
            out.unchanged += 1
        else:
            out.changed.append(x)
    return out


def batches(lines: list[Line]) -> Iterator[list[Line]]:
    """A chunk's lines, split where a key repeats: a repeat is then classified against its earlier line."""
    batch: list[Line] = []
    keys: set[str] = set()
    for x in lines:
        if x.key in keys:
            yield batch
            batch, keys = [], set()
        batch.append(x)
        keys.add(x.key)
    yield batch
