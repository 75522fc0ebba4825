"""Apply a snapshot file (gzip or plain JSON Lines) to PostgreSQL in constant memory.

Stream lines → rows → COPY into temp staging tables in batches → create missing ``order_items``
partitions in a short separate step → one transaction: classify staged rows against stored ones,
upsert parents, replace children of touched parents, optionally delete rows a full snapshot no longer
has, write the run's counters, commit.

Never roll data back: a stored row is only overwritten by a row whose ``changeTime`` is newer than or
equal to the stored one (or when the stored one is null). A row whose content hash equals the stored one
is "unchanged" and not written at all, so re-applying a file reports 0 inserted and 0 updated.
"""

from __future__ import annotations

import gzip
import io
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import BinaryIO

import orjson
import psycopg
from psycopg import sql

from db import partitions
from db.connection import connect
from db.mapping import ENTITIES, EntitySpec, RowError, content_hash
from db.runs import record_rejects

log = logging.getLogger(__name__)

REJECT_LINE_CHARS = 2000
Progress = Callable[[int, int, int], None]  # (lines read, bytes read, total bytes)


class ApplyError(Exception):
    """The apply was refused or failed; nothing was written to the shop tables."""


class TooManyRejectsError(ApplyError):
    def __init__(self, rejected: int, lines: int, threshold: float) -> None:
        self.rejected, self.lines, self.threshold = rejected, lines, threshold
        super().__init__(
            f"{rejected} of {lines} lines rejected (over the {threshold:.2%} threshold); the apply was rolled "
            "back and the rejects are in snapshot_rejects"
        )


class MassDeleteRefusedError(ApplyError):
    def __init__(self, table: str, incoming: int, stored: int) -> None:
        super().__init__(
            f"full snapshot holds {incoming} {table} but the mirror has {stored}: applying it would delete more "
            "than half of them. Nothing was written. Re-run with --allow-mass-delete if that is intended."
        )


@dataclass
class ApplyResult:
    run_id: int
    entity: str
    lines: int = 0
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    rejected: int = 0
    skipped_older: int = 0
    deleted: int = 0
    child_rows: int = 0
    partitions_created: list[str] = field(default_factory=list)
    deletes_skipped_reason: str | None = None
    seconds: float = 0.0

    def counters(self) -> dict:
        return asdict(self)


def open_lines(path: Path) -> BinaryIO:
    """gzip or plain by the magic bytes, not by the file name."""
    with open(path, "rb") as f:
        magic = f.read(2)
    if magic == b"\x1f\x8b":
        return io.BufferedReader(gzip.open(path, "rb"), buffer_size=1 << 20)
    return open(path, "rb", buffering=1 << 20)


class _Stager:
    """Buffers mapped rows and COPYs them into temp staging tables batch by batch."""

    def __init__(self, conn: psycopg.Connection, spec: EntitySpec, keep_raw: bool) -> None:
        self.conn, self.spec, self.keep_raw = conn, spec, keep_raw
        self.parents: list[tuple] = []
        self.children: list[tuple] = []
        self.bytes = 0
        self.child_count = 0
        stage = sql.Identifier(f"stage_{spec.table}")
        cols = sql.SQL(", ").join(map(sql.Identifier, spec.columns))
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(stage))
        conn.execute(
            sql.SQL(
                "CREATE TEMP TABLE {} AS SELECT 0::bigint AS line_no, {}, content_hash, raw FROM {} WITH NO DATA"
            ).format(stage, cols, sql.Identifier(spec.table))
        )
        self.parent_copy = sql.SQL("COPY {} (line_no, {}, content_hash, raw) FROM STDIN").format(stage, cols)
        if spec.child_table:
            cstage = sql.Identifier(f"stage_{spec.child_table}")
            ccols = sql.SQL(", ").join(map(sql.Identifier, spec.child_columns))
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(cstage))
            conn.execute(
                sql.SQL("CREATE TEMP TABLE {} AS SELECT 0::bigint AS line_no, {} FROM {} WITH NO DATA").format(
                    cstage, ccols, sql.Identifier(spec.child_table)
                )
            )
            self.child_copy = sql.SQL("COPY {} (line_no, {}) FROM STDIN").format(cstage, ccols)
        conn.commit()

    def add(self, line_no: int, line: bytes, row: tuple, children: list[tuple]) -> None:
        raw = line.decode() if self.keep_raw else None
        self.parents.append((line_no, *row, content_hash(line), raw))
        for c in children:
            self.children.append((line_no, *c))
        self.bytes += len(line)

    def flush(self) -> None:
        if not self.parents:
            return
        with self.conn.cursor() as cur:
            with cur.copy(self.parent_copy) as cp:
                for r in self.parents:
                    cp.write_row(r)
            if self.children:
                with cur.copy(self.child_copy) as cp:
                    for r in self.children:
                        cp.write_row(r)
        self.child_count += len(self.children)
        self.parents.clear()
        self.children.clear()
        self.bytes = 0
        self.conn.commit()


def _lines(f: BinaryIO) -> Iterator[tuple[int, bytes]]:
    for line_no, line in enumerate(f, 1):
        line = line.strip()
        if line:  # blank lines (a trailing newline, say) are not records
            yield line_no, line


def _guess_key(line: bytes, spec: EntitySpec) -> str | None:
    """The key of a rejected line, if it can be read: a full snapshot must not delete that row."""
    try:
        obj = orjson.loads(line)
        key = obj.get("code" if spec.name == "orders" else "guid")
        return str(key) if key not in (None, "") else None
    except Exception:  # noqa: BLE001 - any failure just means "unknown key"
        return None


def apply_snapshot_file(
    url: str,
    entity: str,
    path: Path,
    *,
    run_id: int,
    schema: str = "public",
    full: bool = False,
    as_of: datetime | None = None,
    allow_mass_delete: bool = False,
    keep_raw: bool = True,
    reject_threshold: float = 0.01,
    batch_bytes: int = 4 << 20,
    progress: Progress | None = None,
) -> ApplyResult:
    """Apply one snapshot file; see the module docstring. Raises ApplyError subclasses on refusal."""
    spec = ENTITIES[entity]
    started = time.perf_counter()
    result = ApplyResult(run_id=run_id, entity=entity)
    total = os.path.getsize(path)
    main = connect(url, schema)
    side = connect(url, schema, autocommit=True)  # rejects + partition DDL, outside the main transaction
    try:
        stager = _Stager(main, spec, keep_raw)
        rejects: list[tuple[int, str, str]] = []
        reject_keys: set[str] = set()
        unknown_reject_keys = 0
        mapper = spec.mapper
        with open_lines(path) as f:
            for line_no, line in _lines(f):
                result.lines += 1
                try:
                    obj = orjson.loads(line)
                    if not isinstance(obj, dict):
                        raise RowError(f"expected a JSON object, got {type(obj).__name__}")
                    row, children = mapper(obj)
                except (orjson.JSONDecodeError, RowError) as e:
                    reason = f"invalid JSON: {e}" if isinstance(e, orjson.JSONDecodeError) else str(e)
                    result.rejected += 1
                    key = _guess_key(line, spec)
                    if key is None:
                        unknown_reject_keys += 1
                    else:
                        reject_keys.add(key)
                    text = line[: REJECT_LINE_CHARS * 4].decode("utf-8", "replace")[:REJECT_LINE_CHARS]
                    rejects.append((line_no, reason[:500], text))
                    if len(rejects) >= 1000:
                        record_rejects(side, run_id, rejects)
                        rejects.clear()
                    continue
                stager.add(line_no, line, row, children)
                if stager.bytes >= batch_bytes:
                    stager.flush()
                    if progress:
                        progress(result.lines, _position(f), total)
        stager.flush()
        record_rejects(side, run_id, rejects)
        if progress:
            progress(result.lines, total, total)

        if result.lines and result.rejected / result.lines > reject_threshold:
            raise TooManyRejectsError(result.rejected, result.lines, reject_threshold)

        if spec.child_table == partitions.PARENT:
            quarters = partitions.quarters_of_stage(main, f"stage_{spec.child_table}")
            main.commit()
            result.partitions_created = partitions.ensure_partitions(side, quarters)

        _apply_staged(main, spec, result, full=full, as_of=as_of, allow_mass_delete=allow_mass_delete,
                      reject_keys=reject_keys, unknown_reject_keys=unknown_reject_keys)
        result.seconds = time.perf_counter() - started
        return result
    except BaseException:
        main.rollback()
        raise
    finally:
        main.close()
        side.close()


def _position(f: BinaryIO) -> int:
    """Compressed bytes consumed so far (for progress), best effort."""
    inner = getattr(f, "raw", None)
    fileobj = getattr(inner, "fileobj", None)
    try:
        return (fileobj or f).tell()
    except (OSError, ValueError):
        return 0


def _apply_staged(
    conn: psycopg.Connection,
    spec: EntitySpec,
    result: ApplyResult,
    *,
    full: bool,
    as_of: datetime | None,
    allow_mass_delete: bool,
    reject_keys: set[str],
    unknown_reject_keys: int,
) -> None:
    """The one transaction that changes the shop tables."""
    t = sql.Identifier(spec.table)
    stage = sql.Identifier(f"stage_{spec.table}")
    key = sql.Identifier(spec.key)
    cols = spec.columns
    q = {"t": t, "stage": stage, "key": key}

    with conn.transaction():
        conn.execute(sql.SQL("ANALYZE {}").format(stage))
        if full:
            incoming = conn.execute(sql.SQL("SELECT count(DISTINCT {key}) FROM {stage}").format(**q)).fetchone()[0]
            stored = conn.execute(sql.SQL("SELECT count(*) FROM {t}").format(**q)).fetchone()[0]
            if not allow_mass_delete and stored and (incoming + len(reject_keys)) < stored / 2:
                raise MassDeleteRefusedError(spec.table, incoming, stored)

        # Classify each staged key against the stored row: i(nsert), w(rite), u(nchanged), o(lder).
        # Within the file, the newest line per key wins; the others count as skipped-as-older.
        conn.execute("DROP TABLE IF EXISTS stage_class")
        conn.execute(
            sql.SQL(
                """CREATE TEMP TABLE stage_class ON COMMIT DROP AS
                SELECT DISTINCT ON (s.{key}) s.line_no, s.{key} AS key,
                  CASE WHEN t.{key} IS NULL THEN 'i'
                       WHEN t.changed_at IS NOT NULL AND (s.changed_at IS NULL OR s.changed_at < t.changed_at)
                         THEN 'o'
                       WHEN t.content_hash = s.content_hash THEN 'u'
                       ELSE 'w' END AS k
                FROM {stage} s LEFT JOIN {t} t ON t.{key} = s.{key}
                ORDER BY s.{key}, s.changed_at DESC NULLS LAST, s.line_no DESC"""
            ).format(**q)
        )
        staged = conn.execute(sql.SQL("SELECT count(*) FROM {stage}").format(**q)).fetchone()[0]
        counts = dict(conn.execute("SELECT k, count(*) FROM stage_class GROUP BY k").fetchall())
        conn.execute("CREATE INDEX ON stage_class (line_no) WHERE k IN ('i', 'w')")
        conn.execute("ANALYZE stage_class")
        result.inserted = counts.get("i", 0)
        result.updated = counts.get("w", 0)
        result.unchanged = counts.get("u", 0)
        result.skipped_older = counts.get("o", 0) + (staged - sum(counts.values()))

        if result.inserted or result.updated:
            col_list = sql.SQL(", ").join(map(sql.Identifier, cols))
            sel_list = sql.SQL(", ").join(sql.SQL("s.{}").format(sql.Identifier(c)) for c in cols)
            updates = sql.SQL(", ").join(
                sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(c))
                for c in (*cols, "content_hash", "raw", "run_id", "synced_at") if c != spec.key
            )
            conn.execute(
                sql.SQL(
                    """INSERT INTO {t} ({cols}, content_hash, raw, run_id, synced_at)
                    SELECT {sel}, s.content_hash, s.raw, {run}, now()
                    FROM {stage} s JOIN stage_class c ON c.line_no = s.line_no AND c.k IN ('i', 'w')
                    ON CONFLICT ({key}) DO UPDATE SET {updates}
                    WHERE {t}.changed_at IS NULL OR EXCLUDED.changed_at >= {t}.changed_at"""
                ).format(cols=col_list, sel=sel_list, updates=updates, run=sql.Literal(result.run_id), **q)
            )
            if spec.child_table:
                result.child_rows = _replace_children(conn, spec)

        if full:
            _delete_absent(conn, spec, result, as_of, reject_keys, unknown_reject_keys)

        conn.execute(
            """UPDATE snapshot_runs SET status = 'succeeded', finished_at = now(), lines = %s, inserted = %s,
                 updated = %s, unchanged = %s, rejected = %s, skipped_older = %s, deleted = %s, child_rows = %s
               WHERE id = %s""",
            (result.lines, result.inserted, result.updated, result.unchanged, result.rejected,
             result.skipped_older, result.deleted, result.child_rows, result.run_id),
        )


def _replace_children(conn: psycopg.Connection, spec: EntitySpec) -> int:
    ct = sql.Identifier(spec.child_table)
    cstage = sql.Identifier(f"stage_{spec.child_table}")
    ckey = sql.Identifier(spec.child_key)
    ccols = spec.child_columns
    col_list = sql.SQL(", ").join(map(sql.Identifier, ccols))
    sel_list = sql.SQL(", ").join(sql.SQL("s.{}").format(sql.Identifier(c)) for c in ccols)
    conn.execute(
        sql.SQL("DELETE FROM {ct} x USING stage_class c WHERE c.k = 'w' AND x.{ckey} = c.key").format(
            ct=ct, ckey=ckey
        )
    )
    if spec.child_table == "product_variants":
        # A variant code is unique shop-wide; it may move between products, so upsert on it.
        child_pk = sql.Identifier("code")
        updates = sql.SQL(", ").join(
            sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(c)) for c in ccols if c != "code"
        )
        cur = conn.execute(
            sql.SQL(
                """INSERT INTO {ct} ({cols})
                SELECT DISTINCT ON (s.{pk}) {sel} FROM {cstage} s
                JOIN stage_class c ON c.line_no = s.line_no AND c.k IN ('i', 'w')
                ORDER BY s.{pk}, s.line_no DESC
                ON CONFLICT ({pk}) DO UPDATE SET {updates}"""
            ).format(ct=ct, cols=col_list, sel=sel_list, cstage=cstage, pk=child_pk, updates=updates)
        )
    else:
        cur = conn.execute(
            sql.SQL(
                """INSERT INTO {ct} ({cols}) SELECT {sel} FROM {cstage} s
                JOIN stage_class c ON c.line_no = s.line_no AND c.k IN ('i', 'w')"""
            ).format(ct=ct, cols=col_list, sel=sel_list, cstage=cstage)
        )
    return cur.rowcount


def _delete_absent(
    conn: psycopg.Connection,
    spec: EntitySpec,
    result: ApplyResult,
    as_of: datetime | None,
    reject_keys: set[str],
    unknown_reject_keys: int,
) -> None:
    """A full snapshot makes the mirror equal to the shop: hard-delete stored rows it does not hold.

    Rows changed after the snapshot was taken (``as_of``) are kept: they were written by a newer sync.
    A rejected line whose key could not be read might be any row, so then nothing is deleted.
    """
    if unknown_reject_keys:
        result.deletes_skipped_reason = (
            f"{unknown_reject_keys} rejected line(s) without a readable key: deletes skipped this run"
        )
        log.warning(result.deletes_skipped_reason)
        return
    t = sql.Identifier(spec.table)
    stage = sql.Identifier(f"stage_{spec.table}")
    key = sql.Identifier(spec.key)
    if as_of is None:
        as_of = conn.execute(sql.SQL("SELECT max(changed_at) FROM {}").format(stage)).fetchone()[0]
    conn.execute("CREATE TEMP TABLE stage_deleted (key text) ON COMMIT DROP")
    conn.execute(
        sql.SQL(
            """WITH d AS (
                 DELETE FROM {t} t WHERE NOT EXISTS (SELECT 1 FROM {stage} s WHERE s.{key} = t.{key})
                   AND NOT (t.{key} = ANY(%s))
                   AND (t.changed_at IS NULL OR %s::timestamptz IS NULL OR t.changed_at <= %s::timestamptz)
                 RETURNING t.{key})
               INSERT INTO stage_deleted SELECT * FROM d"""
        ).format(t=t, stage=stage, key=key),
        (list(reject_keys), as_of, as_of),
    )
    result.deleted = conn.execute("SELECT count(*) FROM stage_deleted").fetchone()[0]
    if spec.child_table and result.deleted:
        conn.execute(
            sql.SQL("DELETE FROM {ct} x USING stage_deleted d WHERE x.{ckey} = d.key").format(
                ct=sql.Identifier(spec.child_table), ckey=sql.Identifier(spec.child_key)
            )
        )
