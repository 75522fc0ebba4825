"""The split's shadow quarters get every index ``order_items`` has before the flip attaches them.

The shadow parent copies the parent's indexes once, at ``prepare`` (``LIKE … INCLUDING ALL``). An index
the parent gained since (a release's new ``online_index``, built by ``ensure-indexes`` on the live
partitions only) the flip's ``ATTACH`` would build on each shadow quarter — under the ACCESS EXCLUSIVE
lock on ``order_items`` that the flip holds, for as long as the build takes. So each missing one is
built ``CONCURRENTLY`` on each quarter first (``db.indexes.build``), outside any lock that holds
writers up, and the flip refuses (``missing``) if any is still missing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import psycopg
from psycopg import sql

from db.indexes.build import build_concurrently
from db.partitions.migration import MigrationError, TableIndex, table_indexes
from db.partitions.rollover import PARENT

MAX_NAME = 63  # NAMEDATALEN - 1


@dataclass(frozen=True)
class Missing:
    quarter: str  # the shadow quarter's table
    index: TableIndex  # the parent's index it lacks
    build_as: str  # the name it gets on the quarter

    def __str__(self) -> str:
        return f"{self.index.name} on {self.quarter}"


def _adopts(have: list[TableIndex], parent_index: TableIndex) -> bool:
    """ATTACH adopts a valid index of the same kind and keys (method, columns or expressions, predicate)."""
    return any(
        ix.valid and ix.unique == parent_index.unique and ix.method_keys == parent_index.method_keys for ix in have
    )


def missing(conn: psycopg.Connection, quarters: list[str]) -> list[Missing]:
    """The parent's indexes each of ``quarters`` lacks (ATTACH would build them under its lock)."""
    wanted = table_indexes(conn, PARENT)
    out = []
    for quarter in sorted(quarters):
        have = table_indexes(conn, quarter)
        for ix in sorted(wanted, key=lambda i: i.name):
            if not _adopts(have, ix):
                out.append(Missing(quarter, ix, _name(ix.name, quarter)))
    return out


def build_missing(
    conn: psycopg.Connection, quarters: list[str], *, sleep: Callable[[float], None] = time.sleep
) -> list[str]:
    """Build each missing index on its shadow quarter CONCURRENTLY; the names built. ``conn``: autocommit."""
    schema = conn.execute("SELECT current_schema()").fetchone()[0]
    built = []
    for m in missing(conn, quarters):
        # the keys as the server itself prints the parent's index (pg_get_indexdef), never data
        keys = sql.SQL("USING {}").format(sql.SQL(m.index.method_keys))
        if build_concurrently(conn, schema, m.quarter, m.build_as, keys, unique=m.index.unique, sleep=sleep):
            built.append(f"{m.build_as} on {m.quarter}")
    return built


def refuse_if_missing(conn: psycopg.Connection, quarters: list[str]) -> None:
    """Inside the flip: MigrationError if an ATTACH would have to build an index."""
    lacking = missing(conn, quarters)
    if lacking:
        raise MigrationError(
            f"the shadow quarters lack indexes order_items has ({', '.join(map(str, lacking[:5]))}"
            f"{', …' if len(lacking) > 5 else ''}): the flip would build them under its exclusive lock. "
            "Nothing was flipped; run `hub migrate-partitions --split` again (it builds them concurrently first)"
        )


def _name(index: str, quarter: str) -> str:
    """``ix_order_items_code`` on ``order_items_2024_q1`` → ``ix_order_items_code_2024_q1`` (ensure-indexes' names)."""
    suffix = quarter.removeprefix(PARENT)
    name = f"{index}{suffix}" if suffix != quarter else f"{index}_{quarter}"
    if len(name) > MAX_NAME:
        raise MigrationError(f"index name {name!r} is longer than {MAX_NAME} characters: shorten {index!r}")
    return name
