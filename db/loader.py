"""Apply a snapshot file (gzip or plain JSON Lines) to PostgreSQL in constant memory.

The whole apply is one transaction on the shop tables, built batch by batch (a few MB of lines each):

1. read the file in blocks of whole lines; parse, map and format them as COPY rows, in worker
   processes for big files (``db/chunks.py``); a line that cannot be mapped is a reject;
2. look the batch's keys up in the table and classify each line: new, newer-or-equal and changed,
   unchanged (same content hash), or older than the stored row (skipped: never roll data back);
3. create any missing ``order_items`` partition for the batch's quarters, in a short separate
   transaction under ``lock_timeout`` on a second connection;
4. in a savepoint: COPY new rows straight into the tables; COPY changed rows into temp staging
   tables, upsert them (guarded again by ``changeTime`` in SQL) and replace their children.

A value PostgreSQL refuses fails the batch's savepoint; the batch is then redone line by line with
exact validation, so the bad line becomes a reject naming its field and the good ones still apply.
At the end: the reject threshold (over it, everything rolls back; the rejects, written on the second
connection, stay), the full-snapshot deletes and their mass-delete guard, the run's counters, commit.

COPYing new rows straight into the tables instead of staging everything first halves the rows
PostgreSQL writes on a first import, and a first import into an empty table builds its secondary
indexes at the end (``db/deferred_indexes.py``); docs/benchmarks.md has the figures. Rows of one batch are
compared with the table, so a key repeated later in the same file is classified against its own
earlier line, which is already in the table inside this transaction.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import BinaryIO

import orjson
import psycopg
from isal import igzip_threaded
from psycopg import sql

from db import deferred_indexes, locks, partitions
from db.chunk_workers import ChunkWorkers
from db.chunks import Chunk, Line, exact_line, process_chunk
from db.connection import connect
from db.dates import DateWindow
from db.mapping import ENTITIES, EntitySpec, RowError
from db.runs import record_rejects

log = logging.getLogger(__name__)

REJECT_LINE_CHARS = 2000
BIG_FILE = 16 << 20  # bytes: worker processes and deferred indexes pay off from here
# Bytes of JSON per chunk: each chunk costs a savepoint, a key check and two COPY statements (partition
# routing is set up per statement); 2 MB chunks ran 10-15 % faster than 1 MB (docs/benchmarks.md).
CHUNK_BYTES = 2 << 20
GZIP_BLOCK = 256 << 10
Progress = Callable[[int, int, int], None]  # (lines read, compressed bytes read, total bytes)


def _refused_value(exc: BaseException) -> bool:
    """A value PostgreSQL refuses (SQLSTATE class 22 data exception, 23 integrity violation): the batch is
    redone line by line and the bad line becomes a reject. Anything else — a missing GRANT, a dropped
    column, a lost connection — is not the data's fault and fails the apply at once with the real error.
    """
    return isinstance(exc, psycopg.Error) and (exc.sqlstate or "")[:2] in ("22", "23")


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
    def __init__(self, table: str, would_delete: int, stored: int, share: float) -> None:
        self.table, self.would_delete, self.stored, self.share = table, would_delete, stored, share
        super().__init__(
            f"full snapshot of {table} would delete {would_delete} of the {stored} stored {table} "
            f"({would_delete / stored:.0%}, over the {share:.0%} limit): is it another shop's or another token's? "
            "Nothing was written. Re-run with --allow-mass-delete if that is intended."
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


class _Source:
    """The file's decompressed bytes, read in blocks; gzip or plain by the magic bytes, not the name.

    gzip is inflated by ISA-L in a background thread (it releases the GIL): about twice as fast as
    the standard library's zlib, and off the thread that feeds PostgreSQL.
    """

    def __init__(self, path: Path) -> None:
        self.file = open(path, "rb")  # noqa: SIM115 - closed in close()
        gz = self.file.read(2) == b"\x1f\x8b"
        self.file.seek(0)
        # 256 KB of gzip per block (ISA-L's default is 1 MB, ~7 MB inflated, two queued): 9 MB less peak
        # RSS, same CPU (docs/benchmarks.md).
        self.stream: BinaryIO = (
            igzip_threaded.open(self.file, "rb", threads=1, block_size=GZIP_BLOCK) if gz else self.file
        )

    def read(self, n: int) -> bytes:
        return self.stream.read(n)

    def position(self) -> int:
        """Compressed bytes read so far (for progress)."""
        try:
            return self.file.tell()
        except (OSError, ValueError):
            return 0

    def close(self) -> None:
        if self.stream is not self.file:
            self.stream.close()
        self.file.close()

    def __enter__(self) -> _Source:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Rejects:
    """Rejected lines, written on the side connection as they come so a rollback keeps them."""

    def __init__(self, side: psycopg.Connection, run_id: int, spec: EntitySpec) -> None:
        self.side, self.run_id, self.spec = side, run_id, spec
        self.pending: list[tuple[int, str, str]] = []
        self.count = 0
        self.keys: set[str] = set()  # rejected lines whose key could be read: a full snapshot keeps them
        self.unknown_keys = 0

    def add(self, line_no: int, line: bytes | memoryview, reason: str) -> None:
        line = bytes(line)
        self.count += 1
        key = self._key(line)
        if key is None:
            self.unknown_keys += 1
        else:
            self.keys.add(key)
        text = line[: REJECT_LINE_CHARS * 4].decode("utf-8", "replace")[:REJECT_LINE_CHARS]
        # PostgreSQL text cannot hold NUL: keep the line readable instead of losing the reject.
        self.pending.append((line_no, reason[:1000].replace("\x00", "\\u0000"), text.replace("\x00", "\\u0000")))
        if len(self.pending) >= 1000:
            self.flush()

    def flush(self) -> None:
        record_rejects(self.side, self.run_id, self.pending)
        self.pending.clear()

    def _key(self, line: bytes) -> str | None:
        try:
            key = orjson.loads(line).get(self.spec.key)  # JSON field and column share the name
        except Exception:  # noqa: BLE001 - unreadable: the key is unknown
            return None
        return None if key in (None, "") or isinstance(key, (dict, list)) else str(key)


class _Writer:
    """Writes batches of mapped lines inside the main transaction (see the module docstring)."""

    def __init__(
        self, main: psycopg.Connection, side: psycopg.Connection, spec: EntitySpec, result: ApplyResult,
        rejects: _Rejects, *, keep_raw: bool, full: bool, window: DateWindow,
    ) -> None:  # fmt: skip
        self.main, self.side, self.spec, self.result, self.rejects = main, side, spec, result, rejects
        self.keep_raw, self.full, self.window = keep_raw, full, window
        self.partitioned = spec.child_table == partitions.PARENT
        self.known_partitions = partitions.existing_partitions(side) if self.partitioned else set()
        self.direct = spec.child_upsert_key is None  # new rows may be COPYed straight into the tables
        ident = sql.Identifier
        names = spec.column_names
        cols = sql.SQL(", ").join(map(ident, names))
        t = ident(spec.table)
        for stmt in (
            sql.SQL("CREATE TEMP TABLE stage_parent ON COMMIT DROP AS SELECT {}, content_hash, raw, run_id "
                    "FROM {} WITH NO DATA").format(cols, t),
            sql.SQL("CREATE TEMP TABLE stage_written (key text, inserted bool) ON COMMIT DROP"),
            sql.SQL("CREATE TEMP TABLE seen_keys (key text) ON COMMIT DROP"),
        ):  # fmt: skip
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
        self.lookup = sql.SQL("SELECT {k}, changed_at, content_hash FROM {t} WHERE {k} = ANY(%s)").format(
            k=ident(spec.key), t=t
        )
        self.any_stored = sql.SQL("SELECT EXISTS (SELECT 1 FROM {t} WHERE {k} = ANY(%s))").format(
            k=ident(spec.key), t=t
        )
        self.upsert = self._upsert_sql()

    # --- one chunk, one batch ----------------------------------------------------------------------

    def write_chunk(self, chunk: Chunk) -> None:
        """A chunk of keys the table does not hold yet (a first import) goes to COPY whole, as the
        worker formatted it: no per-line objects, no re-joining. Anything else goes batch by batch."""
        keys = chunk.keys
        if self.direct and keys and len(set(keys)) == len(keys):
            try:
                with self.main.transaction():
                    if not self.main.execute(self.any_stored, (keys,)).fetchone()[0]:
                        self._copy_chunk(chunk)
                        self.result.inserted += len(keys)
                        self.result.child_rows += sum(chunk.n_children)
                        return
            except psycopg.Error as exc:
                if not _refused_value(exc):
                    raise
                # a value PostgreSQL refuses: the batch path below finds the line and names it
        for batch in _write_batches(chunk.lines()):
            self.write(batch)

    def _copy_chunk(self, chunk: Chunk) -> None:
        if self.partitioned:
            self._ensure_quarters({q for q in chunk.quarters if q is not None})
        with self.main.cursor() as cur:
            with cur.copy(self.copy_parent) as cp:
                cp.write(chunk.parents)
            if self.spec.child_table:
                with cur.copy(self.copy_child) as cp:
                    cp.write(chunk.children)
            if self.full:
                with cur.copy("COPY seen_keys (key) FROM STDIN") as cp:
                    for key in chunk.keys:
                        cp.write_row((key,))

    def write(self, batch: list[Line]) -> None:
        if not batch:
            return
        try:
            with self.main.transaction():
                counts = self._write(batch, direct=self.direct)
        except psycopg.Error as exc:
            if not _refused_value(exc):
                raise
            log.info("batch of %d lines refused by PostgreSQL (%s); redoing it line by line", len(batch),
                     type(exc).__name__)
            counts = self._write_line_by_line(batch)
        for k, v in counts.items():
            setattr(self.result, k, getattr(self.result, k) + v)

    def _write(self, batch: list[Line], *, direct: bool) -> dict[str, int]:
        counts = dict.fromkeys(("inserted", "updated", "unchanged", "skipped_older", "child_rows"), 0)
        stored = {r[0]: (r[1], r[2]) for r in self.main.execute(self.lookup, ([x.key for x in batch],))}
        new, changed = [], []
        for x in batch:
            s = stored.get(x.key)
            if s is None:
                new.append(x)
            elif s[0] is not None and (x.changed is None or x.changed < s[0]):
                counts["skipped_older"] += 1
            elif s[1] == x.hash:
                counts["unchanged"] += 1
            else:
                changed.append(x)
        if self.partitioned:
            self._ensure_partitions(new, changed)
        if not direct:
            changed, new = new + changed, []
        if new:
            counts["inserted"] += len(new)
            counts["child_rows"] += self._copy_new(new)
        if changed:
            ins, upd, kids = self._upsert(changed)
            counts["inserted"] += ins
            counts["updated"] += upd
            counts["skipped_older"] += len(changed) - ins - upd
            counts["child_rows"] += kids
        if self.full:
            with self.main.cursor().copy("COPY seen_keys (key) FROM STDIN") as cp:
                for x in batch:
                    cp.write_row((x.key,))
        return counts

    def _write_line_by_line(self, batch: list[Line]) -> dict[str, int]:
        total = dict.fromkeys(("inserted", "updated", "unchanged", "skipped_older", "child_rows"), 0)
        for x in batch:
            try:
                exact = exact_line(x, self.spec.name, self.keep_raw, self.result.run_id, self.window)
                with self.main.transaction():
                    counts = self._write([exact], direct=False)
            except RowError as exc:
                self.rejects.add(x.line_no, x.text, str(exc))
                continue
            except psycopg.Error as exc:
                if not _refused_value(exc):
                    raise
                reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                self.rejects.add(x.line_no, x.text, f"refused by PostgreSQL: {reason}")
                continue
            for k, v in counts.items():
                total[k] += v
        return total

    # --- statements -----------------------------------------------------------------------------------

    def _ensure_partitions(self, *groups: list[Line]) -> None:
        self._ensure_quarters({x.quarter for g in groups for x in g if x.quarter is not None})

    def _ensure_quarters(self, needed: set[tuple[int, int]]) -> None:
        missing = [partitions.Quarter(y, q) for y, q in sorted(needed)
                   if partitions.Quarter(y, q).name not in self.known_partitions]
        if missing:
            created = partitions.ensure_partitions(self.side, missing, window=self.window)
            self.result.partitions_created.extend(created)
            self.known_partitions.update(q.name for q in missing)

    def _copy_rows(self, cur: psycopg.Cursor, statement: sql.Composed, rows: Iterator[bytes]) -> None:
        with cur.copy(statement) as cp:
            cp.write(b"".join(rows))

    def _copy_new(self, lines: list[Line]) -> int:
        with self.main.cursor() as cur:
            self._copy_rows(cur, self.copy_parent, (x.parent for x in lines))
            if self.spec.child_table:
                self._copy_rows(cur, self.copy_child, (x.children for x in lines))
        return sum(x.n_children for x in lines)

    def _upsert(self, lines: list[Line]) -> tuple[int, int, int]:
        """Stage, then upsert under the changeTime guard; children of written rows are replaced."""
        # TRUNCATE makes new files (slow for one line); DELETE leaves dead rows (temp tables are never
        # autovacuumed, so big batches would bloat them).
        small = len(lines) < 64
        with self.main.cursor() as cur:
            if small:
                cur.execute("DELETE FROM stage_parent; DELETE FROM stage_written")
            else:
                cur.execute("TRUNCATE stage_parent, stage_written")
            self._copy_rows(cur, self.copy_stage_parent, (x.parent for x in lines))
            if self.spec.child_table:
                cur.execute("DELETE FROM stage_child" if small else "TRUNCATE stage_child")
                self._copy_rows(cur, self.copy_stage_child, (x.children for x in lines))
            cur.execute(self.upsert)
            ins, upd = cur.execute(
                "SELECT count(*) FILTER (WHERE inserted), count(*) FILTER (WHERE NOT inserted) FROM stage_written"
            ).fetchone()
            kids = self._replace_children(cur) if self.spec.child_table else 0
        return ins, upd, kids

    def _upsert_sql(self) -> sql.Composed:
        ident = sql.Identifier
        names = self.spec.column_names
        t, key = ident(self.spec.table), ident(self.spec.key)
        updates = sql.SQL(", ").join(
            sql.SQL("{0} = EXCLUDED.{0}").format(ident(c))
            for c in (*names, "content_hash", "raw", "run_id", "synced_at") if c != self.spec.key
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

    def _replace_children(self, cur: psycopg.Cursor) -> int:
        ident = sql.Identifier
        ct, ckey = ident(self.spec.child_table), ident(self.spec.child_key)
        names = self.spec.child_column_names
        cols = sql.SQL(", ").join(map(ident, names))
        cur.execute(sql.SQL("DELETE FROM {ct} x USING stage_written w WHERE x.{ckey} = w.key").format(ct=ct, ckey=ckey))
        if self.spec.child_upsert_key:
            pk = ident(self.spec.child_upsert_key)
            updates = sql.SQL(", ").join(
                sql.SQL("{0} = EXCLUDED.{0}").format(ident(c)) for c in names if c != self.spec.child_upsert_key
            )
            cur.execute(
                sql.SQL(
                    """INSERT INTO {ct} ({cols}) SELECT DISTINCT ON ({pk}) {cols} FROM stage_child s
                    WHERE s.{ckey} IN (SELECT key FROM stage_written)
                    ORDER BY {pk}
                    ON CONFLICT ({pk}) DO UPDATE SET {updates}"""
                ).format(ct=ct, cols=cols, pk=pk, ckey=ckey, updates=updates)
            )
        else:
            cur.execute(
                sql.SQL("INSERT INTO {ct} ({cols}) SELECT {cols} FROM stage_child s "
                        "WHERE s.{ckey} IN (SELECT key FROM stage_written)").format(ct=ct, cols=cols, ckey=ckey)
            )
        return cur.rowcount

    # --- end of file ------------------------------------------------------------------------------

    def delete_absent(self, as_of: datetime | None, stored_before: int, max_share: float | None) -> None:
        """A full snapshot makes the mirror equal to the shop: hard-delete stored rows it does not hold.

        Rows changed after the snapshot was taken (``as_of``) are kept: a newer sync wrote them.
        A rejected line whose key could not be read might be any row, so then nothing is deleted.
        The guard counts the rows the snapshot would delete, not the rows it holds: a snapshot of
        another shop holds as many rows as ours but shares no key with it. Over ``max_share`` of the
        table (None: no limit) the apply is refused and rolled back whole.
        """
        ident = sql.Identifier
        t, key = ident(self.spec.table), ident(self.spec.key)
        if self.rejects.unknown_keys:
            self.result.deletes_skipped_reason = (
                f"{self.rejects.unknown_keys} rejected line(s) without a readable key: deletes skipped this run"
            )
            log.warning(self.result.deletes_skipped_reason)
            return
        self.main.execute("CREATE INDEX ON seen_keys (key)")
        self.main.execute("ANALYZE seen_keys")
        self.main.execute("TRUNCATE stage_written")
        self.main.execute(
            sql.SQL(
                """WITH d AS (
                     DELETE FROM {t} t WHERE NOT EXISTS (SELECT 1 FROM seen_keys s WHERE s.key = t.{key})
                       AND NOT (t.{key} = ANY(%s))
                       AND (t.changed_at IS NULL OR %s::timestamptz IS NULL OR t.changed_at <= %s::timestamptz)
                     RETURNING t.{key})
                   INSERT INTO stage_written (key) SELECT * FROM d"""
            ).format(t=t, key=key),
            (list(self.rejects.keys), as_of, as_of),
        )
        deleted = self.main.execute("SELECT count(*) FROM stage_written").fetchone()[0]
        if max_share is not None and stored_before and deleted > stored_before * max_share:
            raise MassDeleteRefusedError(self.spec.table, deleted, stored_before, max_share)
        self.result.deleted = deleted
        if self.spec.child_table and self.result.deleted:
            self.main.execute(
                sql.SQL("DELETE FROM {ct} x USING stage_written d WHERE x.{ckey} = d.key").format(
                    ct=ident(self.spec.child_table), ckey=ident(self.spec.child_key)
                )
            )


def _raw_chunks(
    path: Path, entity: str, keep_raw: bool, run_id: int, chunk_bytes: int, window: DateWindow
) -> Iterator[tuple]:
    """Cut the file into blocks of whole lines of about ``chunk_bytes`` (the args of process_chunk).

    Blocks, not lists of lines: the reader only looks for the last newline, and one bytes object per
    block is all that is pickled to a worker. Workers split, count and strip the lines; the line
    numbers are made absolute when the chunks come back, in order (:func:`_numbered`).
    """
    rest = b""
    with _Source(path) as f:
        while True:
            data = f.read(chunk_bytes)
            if not data:
                break
            cut = data.rfind(b"\n")
            if cut < 0:  # no line end in this read yet: keep reading
                rest += data
                continue
            block = rest + memoryview(data)[: cut + 1]  # one copy of the block, not two
            rest = data[cut + 1 :]
            yield (entity, block, keep_raw, run_id, f.position(), window)
        if rest:
            yield (entity, rest, keep_raw, run_id, f.position(), window)


_DONE = object()


class _Prefetched:
    """Runs ``items`` in a thread, at most ``depth`` ahead of the consumer (bounded memory).

    What produces a chunk (mapping it, or receiving and unpickling a worker's result) is Python work,
    and writing one is mostly waiting for PostgreSQL, which releases the GIL: the two overlap, so the
    server is not left idle while the next chunk is made ready. ``close`` stops the thread; the thread
    closes ``items`` on its way out, which closes the file the chain reads.
    """

    def __init__(self, items: Iterator[Chunk], depth: int = 1) -> None:
        self.queue: queue.Queue = queue.Queue(maxsize=depth)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._produce, args=(items,), name="snapshot-reader", daemon=True)
        self.thread.start()

    def _offer(self, item: object) -> bool:
        while not self.stop.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _produce(self, items: Iterator[Chunk]) -> None:
        try:
            for item in items:
                if not self._offer(item):
                    return
            self._offer(_DONE)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which re-raises it
            self._offer(exc)
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()

    def __iter__(self) -> Iterator[Chunk]:
        while True:
            item = self.queue.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=30)
        if self.thread.is_alive():  # not seen: the reader only waits on a worker, which is killed first
            log.warning("snapshot reader thread did not stop within 30 s")


def _in_thread(chunks: Iterator[tuple]) -> Iterator[Chunk]:
    """Map chunks in this process (small files: no process start-up); ``_Prefetched`` runs it in its thread."""
    for args in chunks:
        chunk = process_chunk(args)
        chunk.block = args[1]
        yield chunk


def _in_processes(chunks: Iterator[tuple], pool: ChunkWorkers) -> Iterator[Chunk]:
    """Map chunks in the pool's processes, in file order, with a bounded number in flight."""
    blocks: deque[bytes] = deque()  # the blocks in flight; a chunk comes back without its block

    def sent() -> Iterator[tuple]:
        for args in chunks:
            blocks.append(args[1])
            yield args

    for chunk in pool.map(process_chunk, sent()):
        chunk.block = blocks.popleft()
        yield chunk


@contextmanager
def _chunk_pipeline(path: Path, entity: str, *, keep_raw: bool, run_id: int, chunk_bytes: int, workers: int,
                    window: DateWindow) -> Iterator[Iterator[Chunk]]:  # fmt: skip
    """read → parse and map, in file order. On the way out, error or not, the worker processes are killed
    (which wakes a reader waiting on one), the reader thread is joined and the file is closed: a failed
    apply leaves nothing running, so a task retry does not stack a second set of workers."""
    raw = _raw_chunks(path, entity, keep_raw, run_id, chunk_bytes, window)
    with ExitStack() as stack:
        pool = stack.enter_context(ChunkWorkers(workers)) if workers > 0 else None
        prefetched = _Prefetched(_in_processes(raw, pool) if pool else _in_thread(raw))
        stack.callback(prefetched.close)
        if pool:
            stack.callback(pool.kill)  # runs first (LIFO); after a complete read the workers are idle anyway
        yield _numbered(iter(prefetched))


def _numbered(chunks: Iterator[Chunk]) -> Iterator[Chunk]:
    line_no = 1
    for chunk in chunks:
        chunk.first_line_no = line_no
        line_no += chunk.newlines
        yield chunk


def _write_batches(lines: list[Line]) -> Iterator[list[Line]]:
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


def default_workers(path: Path) -> int:
    """Worker processes for a file: none for small files (start-up costs more than it saves)."""
    cores = os.cpu_count() or 1
    if cores < 2 or os.path.getsize(path) < BIG_FILE:
        return 0
    return min(cores, 4)


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
    mass_delete_share: float = 0.5,
    keep_raw: bool = True,
    reject_threshold: float = 0.01,
    window: DateWindow | None = None,
    batch_bytes: int = CHUNK_BYTES,
    workers: int | None = None,
    defer_indexes: bool | None = None,
    progress: Progress | None = None,
) -> ApplyResult:
    """Apply one snapshot file; see the module docstring. Raises ApplyError subclasses on refusal.

    ``as_of`` is when the snapshot was taken (the job's creation time); without it, the newest
    changeTime in the file stands in. ``workers``: processes that parse and map (None: by file size).
    ``defer_indexes``: on a first import into an empty table, build its secondary indexes after the
    load (``db/deferred_indexes.py``; None: for files over 16 MB). ``window``: the dates a line may
    carry (``DateWindow.default()`` when None). A full snapshot that would delete more than
    ``mass_delete_share`` of a table is refused unless ``allow_mass_delete``.
    """
    spec = ENTITIES[entity]
    window = window or DateWindow.default()
    started = time.perf_counter()
    result = ApplyResult(run_id=run_id, entity=entity)
    total = os.path.getsize(path)
    main = connect(url, schema)
    side = connect(url, schema, autocommit=True)  # rejects + partition DDL, outside the main transaction
    try:
        rejects = _Rejects(side, run_id, spec)
        with main.transaction():
            # Under a job lock, this transaction holds the lock's write key and checks that the lock
            # session still holds the lock (db/locks.py): it cannot commit unlocked.
            locks.guard_write(main)
            stored_before = main.execute(
                sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(spec.table))
            ).fetchone()[0] if full else 0  # fmt: skip
            if defer_indexes is None:
                defer_indexes = total >= BIG_FILE
            deferred = deferred_indexes.drop_if_empty(main, schema, spec.table) if defer_indexes else []
            writer = _Writer(main, side, spec, result, rejects, keep_raw=keep_raw, full=full, window=window)
            newest: datetime | None = None
            workers = default_workers(path) if workers is None else workers
            with _chunk_pipeline(path, entity, keep_raw=keep_raw, run_id=run_id, chunk_bytes=batch_bytes,
                                 workers=workers, window=window) as chunks:  # fmt: skip
                for chunk in chunks:
                    for line_no, line, reason in chunk.rejected_lines():
                        rejects.add(line_no, line, reason)
                    writer.write_chunk(chunk)
                    latest = max((t for t in chunk.changed if t is not None), default=None)
                    if latest is not None and (newest is None or latest > newest):
                        newest = latest
                    result.lines += chunk.read
                    if progress:
                        progress(result.lines, chunk.end_position, total)
            rejects.flush()
            result.rejected = rejects.count
            if result.lines and result.rejected / result.lines > reject_threshold:
                raise TooManyRejectsError(result.rejected, result.lines, reject_threshold)
            deferred_indexes.rebuild(main, deferred)
            if full:
                writer.delete_absent(as_of or newest, stored_before, None if allow_mass_delete else mass_delete_share)
            locks.guard_write(main)  # again just before the commit: the apply may have taken an hour
            main.execute(
                """UPDATE snapshot_runs SET status = 'succeeded', finished_at = now(), lines = %s, inserted = %s,
                     updated = %s, unchanged = %s, rejected = %s, skipped_older = %s, deleted = %s,
                     child_rows = %s WHERE id = %s""",
                (result.lines, result.inserted, result.updated, result.unchanged, result.rejected,
                 result.skipped_older, result.deleted, result.child_rows, run_id),
            )  # fmt: skip
        result.seconds = time.perf_counter() - started
        return result
    finally:
        main.close()
        side.close()
