"""Stage 4, write: new rows COPYed straight into the tables, changed rows staged and upserted.

All inside the apply's one transaction (``main``). Missing ``order_items`` partitions are created first,
in short transactions of their own on the side connection (``db/partitions/rollover.py``, under lock_timeout).
COPYing new rows straight in instead of staging everything halves the rows PostgreSQL writes on a
first import (docs/benchmarks.md). A full snapshot also records every key it saw (``seen_keys``), which
``delete.py`` compares the table with at the end.
"""

from __future__ import annotations

from collections.abc import Iterable

import psycopg
from psycopg import sql

from db.dates import DateWindow
from db.loader.parse import Chunk, Line
from db.mapping import EntitySpec
from db.partitions import rollover as partitions

ident = sql.Identifier


def refused_value(exc: BaseException) -> bool:
    """A value PostgreSQL refuses (SQLSTATE class 22 data exception, 23 integrity violation): the batch is
    redone line by line and the bad line becomes a reject. Anything else — a missing GRANT, a dropped
    column, a lost connection — is not the data's fault and fails the apply at once with the real error.
    """
    return isinstance(exc, psycopg.Error) and (exc.sqlstate or "")[:2] in ("22", "23")


class TableWriter:
    def __init__(
        self,
        main: psycopg.Connection,
        side: psycopg.Connection,
        spec: EntitySpec,
        *,
        full: bool,
        window: DateWindow,
        partitions_created: list[str],
    ) -> None:
        self.main, self.side, self.spec, self.full, self.window = main, side, spec, full, window
        self.partitions_created = partitions_created
        self.partitioned = spec.child_table == partitions.PARENT
        self.known_partitions = partitions.existing_partitions(side) if self.partitioned else set()
        # New rows may be COPYed straight in unless children are upserted by a key of their own.
        self.direct = spec.child_upsert_key is None
        t = ident(spec.table)
        cols = sql.SQL(", ").join(map(ident, spec.column_names))
        for stmt in (
            sql.SQL(
                "CREATE TEMP TABLE stage_parent ON COMMIT DROP AS SELECT {}, content_hash, raw, run_id "
                "FROM {} WITH NO DATA"
            ).format(cols, t),
            sql.SQL("CREATE TEMP TABLE stage_written (key text, inserted bool) ON COMMIT DROP"),
            sql.SQL("CREATE TEMP TABLE seen_keys (key text) ON COMMIT DROP"),
        ):
            main.execute(stmt)
        parent_cols = sql.SQL("{}, content_hash, raw, run_id").format(cols)
        self.copy_parent = sql.SQL("COPY {} ({}) FROM STDIN").format(t, parent_cols)
        self.copy_stage_parent = sql.SQL("COPY stage_parent ({}) FROM STDIN").format(parent_cols)
        if spec.child_table:
            ccols = sql.SQL(", ").join(map(ident, spec.child_column_names))
            main.execute(
                sql.SQL("CREATE TEMP TABLE stage_child ON COMMIT DROP AS SELECT {} FROM {} WITH NO DATA").format(
                    ccols, ident(spec.child_table)
                )
            )
            self.copy_child = sql.SQL("COPY {} ({}) FROM STDIN").format(ident(spec.child_table), ccols)
            self.copy_stage_child = sql.SQL("COPY stage_child ({}) FROM STDIN").format(ccols)
        self.upsert = _upsert_sql(spec)
        self.replace_children = _replace_children_sql(spec) if spec.child_table else []

    # --- partitions ---------------------------------------------------------------------------------

    def ensure_quarters(self, needed: Iterable[tuple[int, int] | None]) -> None:
        if not self.partitioned:
            return
        quarters = sorted({partitions.Quarter(*q) for q in needed if q is not None})
        missing = [q for q in quarters if q.name not in self.known_partitions]
        if missing:
            self.partitions_created.extend(partitions.ensure_partitions(self.side, missing, window=self.window))
            self.known_partitions.update(q.name for q in missing)

    # --- new rows -----------------------------------------------------------------------------------

    def copy_chunk(self, chunk: Chunk) -> None:
        """A whole chunk of new keys, as the worker formatted it: no per-line objects, no re-joining."""
        self.ensure_quarters(chunk.quarters)
        with self.main.cursor() as cur:
            with cur.copy(self.copy_parent) as cp:
                cp.write(chunk.parents)
            if self.spec.child_table:
                with cur.copy(self.copy_child) as cp:
                    cp.write(chunk.children)
        self.record_seen(chunk.keys)

    def copy_new(self, lines: list[Line]) -> int:
        """COPY new rows and their children; returns the child rows written."""
        with self.main.cursor() as cur:
            _copy(cur, self.copy_parent, (x.parent for x in lines))
            if self.spec.child_table:
                _copy(cur, self.copy_child, (x.children for x in lines))
        return sum(x.n_children for x in lines)

    # --- changed rows -------------------------------------------------------------------------------

    def upsert_changed(self, lines: list[Line]) -> tuple[int, int, int]:
        """Stage, then upsert under the changeTime guard; children of written rows are replaced.

        Returns (inserted, updated, child rows); a line the guard skipped is in neither.
        """
        # TRUNCATE makes new files (slow for one line); DELETE leaves dead rows (temp tables are never
        # autovacuumed, so big batches would bloat them).
        small = len(lines) < 64
        with self.main.cursor() as cur:
            cur.execute(
                "DELETE FROM stage_parent; DELETE FROM stage_written"
                if small
                else "TRUNCATE stage_parent, stage_written"
            )
            _copy(cur, self.copy_stage_parent, (x.parent for x in lines))
            if self.spec.child_table:
                cur.execute("DELETE FROM stage_child" if small else "TRUNCATE stage_child")
                _copy(cur, self.copy_stage_child, (x.children for x in lines))
            cur.execute(self.upsert)
            written = cur.execute("SELECT key, inserted FROM stage_written").fetchall()
            ins = sum(1 for _, inserted in written if inserted)
            kids = 0
            if written and self.replace_children:
                delete, insert = self.replace_children
                # The written keys as an array, not a join with stage_written: a temporary table has no
                # statistics, and the planner joined it by scanning all of order_items every round.
                cur.execute(delete, ([k for k, _ in written],))
                cur.execute(insert)
                kids = cur.rowcount
        return ins, len(written) - ins, kids

    # --- keys seen by a full snapshot -----------------------------------------------------------------

    def record_seen(self, keys: Iterable[str]) -> None:
        if not self.full:
            return
        with self.main.cursor().copy("COPY seen_keys (key) FROM STDIN") as cp:
            for key in keys:
                cp.write_row((key,))


def _copy(cur: psycopg.Cursor, statement: sql.Composed, rows: Iterable[bytes | memoryview]) -> None:
    with cur.copy(statement) as cp:
        cp.write(b"".join(rows))


def _upsert_sql(spec: EntitySpec) -> sql.Composed:
    names = spec.column_names
    t, key = ident(spec.table), ident(spec.key)
    updates = sql.SQL(", ").join(
        sql.SQL("{0} = EXCLUDED.{0}").format(ident(c))
        for c in (*names, "content_hash", "raw", "run_id", "synced_at")
        if c != spec.key
    )
    # DISTINCT ON: a key twice in one batch (line-by-line mode never has that; a batch flushes first).
    return sql.SQL(
        """WITH up AS (
             INSERT INTO {t} ({cols}, content_hash, raw, run_id, synced_at)
             SELECT {cols}, content_hash, raw, run_id, now() FROM stage_parent
             ON CONFLICT ({key}) DO UPDATE SET {updates}
             WHERE {t}.changed_at IS NULL OR EXCLUDED.changed_at >= {t}.changed_at
             RETURNING {t}.{key}, (xmax = 0) AS inserted)
           INSERT INTO stage_written SELECT * FROM up"""
    ).format(t=t, key=key, cols=sql.SQL(", ").join(map(ident, names)), updates=updates)


def _replace_children_sql(spec: EntitySpec) -> list[sql.Composed]:
    """Delete the children of every written row, then insert the staged ones (upserted by their own key
    where children have one: a product variant's code)."""
    ct, ckey = ident(spec.child_table), ident(spec.child_key)
    names = spec.child_column_names
    cols = sql.SQL(", ").join(map(ident, names))
    delete = sql.SQL("DELETE FROM {ct} WHERE {ckey} = ANY(%s)").format(ct=ct, ckey=ckey)
    if not spec.child_upsert_key:
        insert = sql.SQL(
            "INSERT INTO {ct} ({cols}) SELECT {cols} FROM stage_child s "
            "WHERE s.{ckey} IN (SELECT key FROM stage_written)"
        )
        return [delete, insert.format(ct=ct, cols=cols, ckey=ckey)]
    pk = ident(spec.child_upsert_key)
    updates = sql.SQL(", ").join(
        sql.SQL("{0} = EXCLUDED.{0}").format(ident(c)) for c in names if c != spec.child_upsert_key
    )
    # A code twice in one batch (it moved to another product, or a product lists it twice): the parent
    # changed last wins, then the later position; ties by parent key, so the winner never depends on
    # the order of the file or of the staging table.
    last = sql.SQL(", s.{} DESC").format(ident("position")) if "position" in names else sql.SQL("")
    return [
        delete,
        sql.SQL(
            """INSERT INTO {ct} ({cols}) SELECT DISTINCT ON ({pk}) {cols} FROM stage_child s
           WHERE s.{ckey} IN (SELECT key FROM stage_written)
           ORDER BY {pk}, (SELECT p.changed_at FROM stage_parent p WHERE p.{key} = s.{ckey}) DESC NULLS LAST,
                    s.{ckey} DESC{last}
           ON CONFLICT ({pk}) DO UPDATE SET {updates}"""
        ).format(ct=ct, cols=cols, pk=pk, ckey=ckey, key=ident(spec.key), last=last, updates=updates),
    ]
