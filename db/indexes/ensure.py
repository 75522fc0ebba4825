"""Declared indexes made present without blocking writes; INVALID ones repaired; unused and duplicates found.

The models declare every index (``models/tables.py``); the strategic ones (``online_index``) are
built here, never by a migration, because a plain ``CREATE INDEX`` blocks writes for the whole build.

- a plain table: ``CREATE INDEX CONCURRENTLY`` (SHARE UPDATE EXCLUSIVE: writers go on);
- the partitioned ``order_items`` (CONCURRENTLY is refused on a partitioned table): the index
  ``ON ONLY`` the parent (starts INVALID, an instant catalog change), then per leaf partition a
  ``CREATE INDEX CONCURRENTLY`` and ``ALTER INDEX … ATTACH PARTITION``; the parent index turns valid
  by itself once every leaf is attached. A partition created later gets the index on its ATTACH;
- an INVALID index (a failed or killed concurrent build) is rebuilt with ``REINDEX INDEX
  CONCURRENTLY``; the ``_ccnew``/``_ccold`` leftovers of a failed REINDEX CONCURRENTLY are dropped
  (``DROP INDEX CONCURRENTLY``).

Restartable: a killed run leaves at worst an INVALID index or a half-attached parent, which the next
run repairs or completes; a run with nothing to do changes nothing. Every DDL statement runs on an
autocommit connection under a ``lock_timeout`` and is retried when it times out: the short one for the
statements whose lock queues writers behind it (``ON ONLY`` and ``ATTACH``), a longer one for the
concurrent builds, whose waits (for older transactions) never hold a writer up.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import psycopg
import sqlalchemy as sa
from psycopg import sql
from sqlalchemy.dialects import postgresql
from sqlalchemy.schema import CreateIndex

from db.indexes import build
from models.tables import metadata as models_metadata

log = logging.getLogger(__name__)

LEFTOVER = re.compile(r"_cc(new|old)\d*$")
MAX_NAME = 63  # NAMEDATALEN - 1: a longer name would be cut silently
# "Never scanned" means something only over a week of traffic (weekly jobs included): a younger database
# (or statistics reset since) would list every index its first queries have not touched yet.
UNUSED_WINDOW = timedelta(days=7)


class IndexMaintenanceError(Exception):
    """Some index could not be built or repaired; the report says which and why."""


@dataclass(frozen=True)
class Declared:
    name: str
    table: str
    unique: bool
    keys: str  # the key list (and any WHERE) as the model compiles it: "(lower(btrim(email)))"


@dataclass(frozen=True)
class Present:
    name: str
    table: str
    table_kind: str  # pg_class.relkind of the table: r (plain or leaf partition), p (partitioned)
    valid: bool


@dataclass
class Report:
    """What a run did (or, dry, would do); one dict per row of the flow's table artifact."""

    dry_run: bool
    actions: list[dict[str, Any]] = field(default_factory=list)
    unused: list[dict[str, Any]] = field(default_factory=list)
    duplicates: list[dict[str, Any]] = field(default_factory=list)
    unused_note: str = ""  # why no unused list (the statistics are too young), when there is none

    def add(self, action: str, index: str, table: str, detail: str = "") -> None:
        self.actions.append({"action": action, "index": index, "table": table, "detail": detail})

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [a for a in self.actions if a["action"] == "failed"]

    def rows(self) -> list[dict[str, Any]]:
        out = [dict(a) for a in self.actions]
        out += [
            {"action": "unused", "index": u["index"], "table": u["table"], "detail": u["size"]} for u in self.unused
        ]
        out += [
            {"action": "duplicate", "index": ", ".join(d["indexes"]), "table": d["table"], "detail": d["key"]}
            for d in self.duplicates
        ]
        return out


# --- what the models declare ---------------------------------------------------------------------------


def declared_indexes(metadata: sa.MetaData = models_metadata) -> list[Declared]:
    """Every ``sa.Index`` of the models (primary keys and unique constraints are the migrations' own)."""
    dialect = postgresql.dialect()
    out = []
    for table in metadata.sorted_tables:
        on = f" ON {dialect.identifier_preparer.format_table(table)} "
        for ix in sorted(table.indexes, key=lambda i: i.name):
            ddl = str(CreateIndex(ix).compile(dialect=dialect))
            out.append(Declared(ix.name, table.name, bool(ix.unique), ddl.split(on, 1)[1].strip()))
    return out


# --- what the database holds ---------------------------------------------------------------------------


def present_indexes(conn: psycopg.Connection, schema: str) -> dict[str, Present]:
    rows = conn.execute(
        """SELECT ic.relname, t.relname, t.relkind::text, i.indisvalid
             FROM pg_index i
             JOIN pg_class ic ON ic.oid = i.indexrelid
             JOIN pg_class t ON t.oid = i.indrelid
             JOIN pg_namespace n ON n.oid = ic.relnamespace
            WHERE n.nspname = %s""",
        (schema,),
    ).fetchall()
    return {r[0]: Present(*r) for r in rows}


def table_kind(conn: psycopg.Connection, schema: str, table: str) -> str | None:
    row = conn.execute(
        """SELECT c.relkind::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE n.nspname = %s AND c.relname = %s""",
        (schema, table),
    ).fetchone()
    return row[0] if row else None


def leaves_without(conn: psycopg.Connection, schema: str, table: str, index: str | None) -> list[str]:
    """Leaf partitions of ``table`` with no index attached to the parent index ``index`` (all if None)."""
    rows = conn.execute(
        """SELECT leaf.relname
             FROM pg_partition_tree(to_regclass(format('%%I.%%I', %(s)s::text, %(t)s::text))) p
             JOIN pg_class leaf ON leaf.oid = p.relid
            WHERE p.isleaf AND NOT EXISTS (
                  SELECT 1 FROM pg_inherits h JOIN pg_index li ON li.indexrelid = h.inhrelid
                   WHERE h.inhparent = to_regclass(format('%%I.%%I', %(s)s::text, %(i)s::text))
                     AND li.indrelid = p.relid)
            ORDER BY leaf.relname""",
        {"s": schema, "t": table, "i": index},
    ).fetchall()
    return [r[0] for r in rows]


def statistics_age(conn: psycopg.Connection) -> timedelta:
    """How long the index usage statistics cover: since their reset, or since the hub's database was made."""
    row = conn.execute(
        """SELECT now() - greatest((SELECT stats_reset FROM pg_stat_database WHERE datname = current_database()),
                                   (SELECT min(created_at) FROM hub_instance))"""
    ).fetchone()
    return row[0] if row and row[0] is not None else timedelta.max


def unused_indexes(conn: psycopg.Connection, schema: str) -> list[dict[str, Any]]:
    """Indexes never scanned since the statistics were reset (primary keys and unique ones excluded)."""
    rows = conn.execute(
        """SELECT s.indexrelname, s.relname, pg_size_pretty(pg_relation_size(s.indexrelid))
             FROM pg_stat_user_indexes s JOIN pg_index i ON i.indexrelid = s.indexrelid
            WHERE s.schemaname = %s AND s.idx_scan = 0 AND NOT i.indisunique AND NOT i.indisprimary
            ORDER BY pg_relation_size(s.indexrelid) DESC, s.indexrelname""",
        (schema,),
    ).fetchall()
    return [{"index": r[0], "table": r[1], "size": r[2]} for r in rows]


def duplicate_indexes(conn: psycopg.Connection, schema: str) -> list[dict[str, Any]]:
    """Indexes of one table with the same key (columns, expressions, operator classes, order, predicate)."""
    rows = conn.execute(
        """SELECT t.relname, array_agg(ic.relname::text ORDER BY ic.relname),
                  min(regexp_replace(pg_get_indexdef(i.indexrelid), '^.* USING ', ''))
             FROM pg_index i
             JOIN pg_class ic ON ic.oid = i.indexrelid
             JOIN pg_class t ON t.oid = i.indrelid
             JOIN pg_namespace n ON n.oid = t.relnamespace
            WHERE n.nspname = %s
            GROUP BY t.relname, i.indkey::text, i.indclass::text, i.indcollation::text, i.indoption::text,
                     coalesce(pg_get_expr(i.indexprs, i.indrelid), ''), coalesce(pg_get_expr(i.indpred, i.indrelid), '')
           HAVING count(*) > 1
            ORDER BY 1, 2""",
        (schema,),
    ).fetchall()
    return [{"table": r[0], "indexes": list(r[1]), "key": r[2]} for r in rows]


# --- the plan and the run ------------------------------------------------------------------------------


def ensure_indexes(
    conn: psycopg.Connection,
    schema: str,
    *,
    dry_run: bool = False,
    declared: list[Declared] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> Report:
    """Repair INVALID indexes, build the declared ones that are missing, report unused and duplicates.

    ``conn`` must be autocommit (CONCURRENTLY refuses a transaction block). ``dry_run`` only reports.
    """
    report = repair_invalid(conn, schema, dry_run=dry_run, sleep=sleep)
    report.actions += build_missing(conn, schema, dry_run=dry_run, declared=declared, sleep=sleep).actions
    return survey(conn, schema, report)


def repair_invalid(
    conn: psycopg.Connection, schema: str, *, dry_run: bool = False, sleep: Callable[[float], None] = time.sleep
) -> Report:
    """Drop ``_ccnew``/``_ccold`` leftovers, then REINDEX CONCURRENTLY every other INVALID index of a table."""
    report = Report(dry_run)
    _repair_invalid(_Ddl(conn, schema, dry_run, sleep), report)
    return report


def build_missing(
    conn: psycopg.Connection,
    schema: str,
    *,
    dry_run: bool = False,
    declared: list[Declared] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> Report:
    """Build every declared index that is absent (or, on the partitioned table, not yet valid)."""
    report = Report(dry_run)
    ddl = _Ddl(conn, schema, dry_run, sleep)
    present = present_indexes(conn, schema)
    for ix in declared_indexes() if declared is None else declared:
        kind = table_kind(conn, schema, ix.table)
        if kind == "p":
            _ensure_partitioned(ddl, report, ix, present.get(ix.name))
        elif kind == "r" and ix.name not in present:
            _build(ddl, report, ix, ix.table, ix.name)
    return report


def survey(conn: psycopg.Connection, schema: str, report: Report | None = None) -> Report:
    """Fill in the unused and the duplicate indexes (a report only: dropping one is a migration)."""
    report = report or Report(dry_run=True)
    age = statistics_age(conn)
    if age >= UNUSED_WINDOW:
        report.unused = unused_indexes(conn, schema)
    else:
        days = age.total_seconds() / 86400
        report.unused_note = (
            f"unused indexes are listed once the usage statistics cover {UNUSED_WINDOW.days} days "
            f"(they cover {days:.1f})"
        )
    report.duplicates = duplicate_indexes(conn, schema)
    return report


def _repair_invalid(ddl: _Ddl, report: Report) -> None:
    """Drop ``_ccnew``/``_ccold`` leftovers, then REINDEX CONCURRENTLY every other INVALID index of a table.

    An INVALID index on a partitioned parent is a build in progress: ``_ensure_partitioned`` completes it.
    """
    invalid = [p for p in present_indexes(ddl.conn, ddl.schema).values() if not p.valid and p.table_kind == "r"]
    for p in sorted(invalid, key=lambda p: (not LEFTOVER.search(p.name), p.name)):
        if LEFTOVER.search(p.name):
            ddl.run("DROP INDEX CONCURRENTLY IF EXISTS {}", p.name, concurrent=True)
            report.add("dropped-leftover", p.name, p.table, "of a failed REINDEX CONCURRENTLY")
            continue
        try:
            ddl.run("REINDEX INDEX CONCURRENTLY {}", p.name, concurrent=True)
        except psycopg.OperationalError:
            raise  # a lock not granted, a lost connection: transient, the task retries
        except psycopg.Error as exc:
            report.add("failed", p.name, p.table, f"rebuild failed: {_reason(exc)}")
            _drop_leftovers_of(ddl, p.name)
            continue
        report.add("repaired", p.name, p.table, "was INVALID; rebuilt concurrently")


def _drop_leftovers_of(ddl: _Ddl, name: str) -> None:
    for p in present_indexes(ddl.conn, ddl.schema).values():
        if not p.valid and p.name.startswith(name) and LEFTOVER.search(p.name[len(name) :]):
            ddl.run("DROP INDEX CONCURRENTLY IF EXISTS {}", p.name, concurrent=True)


def _build(ddl: _Ddl, report: Report, ix: Declared, table: str, name: str, action: str = "built") -> bool:
    """CREATE INDEX CONCURRENTLY ``name`` on ``table`` (``db.indexes.build``); a failed build's INVALID index goes."""
    keys = sql.SQL(ix.keys)  # compiled from the models' own declaration, never from data
    try:
        if ddl.dry_run:
            log.info("dry run: CREATE INDEX CONCURRENTLY %s ON %s %s", name, table, ix.keys)
        else:
            build.build_concurrently(ddl.conn, ddl.schema, table, name, keys, unique=ix.unique, sleep=ddl.sleep)
    except psycopg.OperationalError:
        raise
    except psycopg.Error as exc:
        report.add("failed", name, table, f"build failed: {_reason(exc)}")
        return False
    report.add(action, name, table, "CONCURRENTLY")
    return True


def _ensure_partitioned(ddl: _Ddl, report: Report, ix: Declared, parent: Present | None) -> None:
    """The parent index ON ONLY, then each leaf's index built concurrently and attached."""
    if parent is not None and parent.valid:
        return
    conn, schema = ddl.conn, ddl.schema
    leaves = leaves_without(conn, schema, ix.table, ix.name)
    if parent is None:
        # With no partition yet, a plain CREATE INDEX on the parent is instant and valid at once.
        ddl.execute(
            sql.SQL("CREATE {unique}INDEX IF NOT EXISTS {name} ON {only}{table} {keys}").format(
                unique=sql.SQL("UNIQUE " if ix.unique else ""),
                name=sql.Identifier(ix.name),
                only=sql.SQL("ONLY " if leaves else ""),
                table=sql.Identifier(schema, ix.table),
                keys=sql.SQL(ix.keys),
            )
        )
        report.add("created-parent", ix.name, ix.table, f"ON ONLY, {len(leaves)} partitions to attach")
    for leaf in leaves:
        child = _child_name(ix.name, ix.table, leaf)
        existing = present_indexes(conn, schema).get(child)
        if existing is not None and not existing.valid:
            ddl.run("DROP INDEX CONCURRENTLY IF EXISTS {}", child, concurrent=True)
            existing = None
        if existing is None and not _build(ddl, report, ix, leaf, child, action="built-partition"):
            continue
        ddl.execute(
            sql.SQL("ALTER INDEX {} ATTACH PARTITION {}").format(
                sql.Identifier(schema, ix.name), sql.Identifier(schema, child)
            )
        )
        report.add("attached", child, leaf, f"to {ix.name}")


def _child_name(index: str, table: str, leaf: str) -> str:
    """``ix_order_items_code`` on ``order_items_2026_q1`` → ``ix_order_items_code_2026_q1``."""
    suffix = leaf.removeprefix(table)
    name = f"{index}{suffix}" if suffix != leaf else f"{index}_{leaf}"
    if len(name) > MAX_NAME:
        raise IndexMaintenanceError(f"index name {name!r} is longer than {MAX_NAME} characters: shorten {index!r}")
    return name


def _reason(exc: psycopg.Error) -> str:
    first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return f"{exc.sqlstate or '?'} {first}"


class _Ddl:
    """One DDL statement at a time, under a lock_timeout, retried with backoff when the lock is not granted."""

    def __init__(self, conn: psycopg.Connection, schema: str, dry_run: bool, sleep: Callable[[float], None]):
        if not conn.autocommit:
            raise ValueError("index DDL needs an autocommit connection (CONCURRENTLY refuses a transaction)")
        self.conn, self.schema, self.dry_run, self.sleep = conn, schema, dry_run, sleep

    def run(self, template: str, index: str, *, concurrent: bool = False) -> None:
        self.execute(sql.SQL(template).format(sql.Identifier(self.schema, index)), concurrent=concurrent)

    def execute(self, stmt: sql.Composable, *, concurrent: bool = False, cleanup: str | None = None) -> None:
        if self.dry_run:
            log.info("dry run: %s", stmt.as_string(self.conn))
            return
        hook = (lambda: self.drop_if_invalid(cleanup)) if cleanup else None  # a failed concurrent build
        build.run_ddl(self.conn, stmt, concurrent=concurrent, sleep=self.sleep, cleanup=hook)

    def drop_if_invalid(self, name: str | None) -> None:
        if name:
            build.drop_if_invalid(self.conn, self.schema, name, sleep=self.sleep)
