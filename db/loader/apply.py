"""Apply one snapshot file: the stages of ``db/loader`` in order, in one transaction on the shop tables."""

from __future__ import annotations

import logging
import os
import time
from datetime import datetime
from pathlib import Path

import psycopg
from psycopg import sql

from db import locks
from db.connection import connect
from db.dates import DateWindow
from db.erasures import erased_since
from db.indexes import deferred as deferred_indexes
from db.loader import classify, known
from db.loader.delete import delete_absent
from db.loader.options import ApplyOptions, ApplyResult, Progress, TooManyRejectsError
from db.loader.parse import Chunk, Line, exact_line, process_chunk
from db.loader.pipeline import BIG_FILE, default_workers, mapped_chunks
from db.loader.rejects import Rejects
from db.loader.write import TableWriter, refused_value
from db.mapping import ENTITIES, RowError
from db.partitions import rollover as partitions

log = logging.getLogger(__name__)
UPSERT_ROUND = 2000  # changed lines per staged-upsert round (see _BatchWriter)


def apply_snapshot_file(
    url: str,
    entity: str,
    path: Path,
    *,
    run_id: int,
    options: ApplyOptions | None = None,
    progress: Progress | None = None,
) -> ApplyResult:
    """Apply one snapshot file (see ``db/loader/__init__.py``); raises ApplyError subclasses on refusal.

    The run (``snapshot_runs`` row ``run_id``) is marked succeeded in the same transaction.
    """
    o = options or ApplyOptions()
    spec = ENTITIES[entity]
    window = o.window or DateWindow.default()
    # The horizon is about order_items' partitions: other entities' children (a product's variants) stay.
    archived = o.archived if spec.child_table == partitions.PARENT else frozenset()
    started = time.perf_counter()
    result = ApplyResult(run_id=run_id, entity=entity)
    total = os.path.getsize(path)
    main = connect(url, o.schema)
    side = connect(url, o.schema, autocommit=True)  # rejects + partition DDL, outside the main transaction
    lookup_conn: psycopg.Connection | None = None  # the reader thread's, for known hashes
    try:
        rejects = Rejects(side, run_id, spec)
        with main.transaction():
            # Under a job lock, this transaction holds the lock's write key and checks that the lock
            # session still holds the lock (db/locks.py): it cannot commit unlocked.
            locks.guard_write(main)
            stored_before = _count(main, spec.table) if o.full else 0
            defer = total >= BIG_FILE if o.defer_indexes is None else o.defer_indexes
            deferred = deferred_indexes.drop_if_empty(main, o.schema, spec.table) if defer else []
            writer = TableWriter(
                main, side, spec, full=o.full, window=window, partitions_created=result.partitions_created
            )
            batch = _BatchWriter(writer, rejects, result, keep_raw=o.keep_raw, window=window, archived=archived)
            batch.erased = erased_since(main, entity)  # one query per apply; empty unless `hub forget` ran
            batch.as_of = o.as_of
            newest: datetime | None = None
            workers = default_workers(path) if o.workers is None else o.workers
            lookup = None
            if known.usable(main, o.schema, spec):  # lines the table holds byte for byte go unparsed
                lookup_conn = connect(url, o.schema, autocommit=True)
                lookup = known.KnownHashes(lookup_conn, spec)
            with mapped_chunks(
                path,
                entity,
                keep_raw=o.keep_raw,
                run_id=run_id,
                chunk_bytes=o.chunk_bytes,
                workers=workers,
                window=window,
                archived=archived,
                known=lookup,
            ) as chunks:
                for chunk in chunks:
                    if chunk.skipped_keys and not set(chunk.skipped_keys).isdisjoint(chunk.keys):
                        chunk = batch.parsed_whole(chunk)  # a key twice in the block: its lines in file order
                    for line_no, line, reason in chunk.rejected_lines():
                        rejects.add(line_no, line, reason)
                    batch.write_chunk(chunk)
                    skipped_latest = batch.write_skipped(chunk)
                    latest = max((t for t in (*chunk.changed, skipped_latest) if t is not None), default=None)
                    if latest is not None and (newest is None or latest > newest):
                        newest = latest
                    result.lines += chunk.read
                    result.beyond_retention += chunk.beyond_retention
                    result.nul_stripped += chunk.nul_stripped
                    if progress:
                        progress(result.lines, chunk.end_position, total)
            batch.flush()
            rejects.flush()
            result.rejected = rejects.count
            if result.lines and result.rejected / result.lines > o.reject_threshold:
                raise TooManyRejectsError(result.rejected, result.lines, o.reject_threshold)
            deferred_indexes.rebuild(main, deferred)
            if o.full:
                result.deleted, result.deletes_skipped_reason = delete_absent(
                    main, spec, rejects, as_of=o.as_of or newest, stored_before=stored_before, limit=o.delete_limit
                )
            locks.guard_write(main)  # again just before the commit: the apply may have taken an hour
            _finish_run(main, result)
        result.seconds = time.perf_counter() - started
        return result
    finally:
        main.close()
        side.close()
        if lookup_conn is not None:
            lookup_conn.close()


class _BatchWriter:
    """Chunks to the table writer: whole when a first import allows, else batch by batch, and a batch
    PostgreSQL refuses line by line with exact validation, so the bad line becomes a reject naming its
    field and the good ones still apply.

    Changed lines wait in ``pending`` for one staged-upsert round of many chunks (``UPSERT_ROUND``
    lines): a nightly full snapshot has a few changed lines in nearly every chunk, and a round per
    chunk (stage, upsert, replace the children, clear the stage) cost more than the lines
    (docs/benchmarks.md). A batch holding a pending key flushes first, so it is classified against
    the row its earlier line wrote; ``flush`` runs before the apply counts, checks and deletes.
    """

    def __init__(
        self,
        writer: TableWriter,
        rejects: Rejects,
        result: ApplyResult,
        *,
        keep_raw: bool,
        window: DateWindow,
        archived: frozenset[tuple[int, int]],
    ) -> None:
        self.w, self.rejects, self.result, self.keep_raw, self.window = writer, rejects, result, keep_raw, window
        self.archived = archived
        self.pending: list[Line] = []
        self.pending_keys: set[str] = set()
        self.erased: dict[str, datetime] = {}  # erased key → erased_at (db/erasures.py)
        self.as_of: datetime | None = None  # when the snapshot was taken (None: unknown, e.g. a local file)

    def write_chunk(self, chunk: Chunk) -> None:
        """A chunk of keys the table does not hold yet (a first import) goes to COPY whole, as the
        worker formatted it. Anything else goes batch by batch."""
        w, keys = self.w, chunk.keys
        if w.direct and keys and len(set(keys)) == len(keys) and not (self.erased and self.erased.keys() & set(keys)):
            try:
                with w.main.transaction():
                    if classify.none_stored(w.main, w.spec, keys):
                        w.copy_chunk(chunk)
                        self.result.add({"inserted": len(keys), "child_rows": sum(chunk.n_children)})
                        return
            except psycopg.Error as exc:
                if not refused_value(exc):
                    raise
                # a value PostgreSQL refuses: the batch path below finds the line and names it
        for batch in classify.batches(chunk.lines()):
            self.write_batch(batch)

    def write_skipped(self, chunk: Chunk) -> datetime | None:
        """The chunk's lines skipped unparsed (``db/loader/known.py``), confirmed in this transaction: a
        line whose row still has its hash is unchanged (its key seen); any other is parsed here and
        written like any line. Returns the newest changeTime among them."""
        keys = chunk.skipped_keys
        if not keys:
            return None
        if self.pending_keys and not self.pending_keys.isdisjoint(keys):
            self.flush()  # a pending changed line of the key is written first, as a batch would
        w = self.w
        query = known.confirm_sql(w.spec, created=bool(self.archived))
        stored = {k: (changed, created) for k, changed, created in w.main.execute(query, (keys, chunk.skipped_hashes))}
        confirmed, unconfirmed = [], []
        for i, k in enumerate(keys):
            # An erased key is left to the erasure check (_not_stale_erased) on the parsed line.
            (confirmed if k in stored and k not in self.erased else unconfirmed).append(i)
        newest = max((stored[keys[i]][0] for i in confirmed if stored[keys[i]][0] is not None), default=None)
        if confirmed:
            self.result.add({"unchanged": len(confirmed)})
            if self.archived:
                self.result.beyond_retention += sum(
                    1
                    for i in confirmed
                    if (c := stored[keys[i]][1]) is not None and partitions.Quarter.of(c).key in self.archived
                )
            w.record_seen(keys[i] for i in confirmed)
        if unconfirmed:
            sub = self._parse(
                [chunk.skipped_text(i) for i in unconfirmed],
                [chunk.first_line_no + chunk.skipped_line_nos[i] for i in unconfirmed],
                chunk.end_position,
            )
            for line_no, line, reason in sub.rejected_lines():
                self.rejects.add(line_no, line, reason)
            self.write_chunk(sub)
            self.result.beyond_retention += sub.beyond_retention
            self.result.nul_stripped += sub.nul_stripped
            latest = max((t for t in sub.changed if t is not None), default=None)
            if latest is not None and (newest is None or latest > newest):
                newest = latest
        return newest

    def parsed_whole(self, chunk: Chunk) -> Chunk:
        """The chunk parsed again here, no line skipped (a key skipped and parsed in one block)."""
        args = (self.w.spec.name, chunk.block, self.keep_raw, self.result.run_id, chunk.end_position, self.window)
        sub = process_chunk((*args, self.archived))
        sub.block, sub.first_line_no = chunk.block, chunk.first_line_no
        return sub

    def _parse(self, texts: list[bytes], line_nos: list[int], end_position: int) -> Chunk:
        """Lines parsed here, numbered as in the file; ``read`` 0 (the chunk they came from counted them)."""
        block = b"\n".join(texts) + b"\n"
        sub = process_chunk(
            (self.w.spec.name, block, self.keep_raw, self.result.run_id, end_position, self.window, self.archived)
        )
        sub.block, sub.first_line_no, sub.read = block, 0, 0
        sub.line_nos = [line_nos[n] for n in sub.line_nos]
        sub.rejects = [(line_nos[n], a, b, reason) for n, a, b, reason in sub.rejects]
        return sub

    def write_batch(self, batch: list[Line]) -> None:
        if not batch:
            return
        if self.pending_keys and not self.pending_keys.isdisjoint(x.key for x in batch):
            self.flush()
        deferred: list[Line] = []
        if self._guarded(batch, lambda: self._write(batch, direct=self.w.direct, defer=deferred)):
            self.pending.extend(deferred)  # only once the batch's savepoint is released
            self.pending_keys.update(x.key for x in deferred)
        if len(self.pending) >= UPSERT_ROUND:
            self.flush()

    def flush(self) -> None:
        """The staged-upsert round of the pending changed lines."""
        lines, self.pending, self.pending_keys = self.pending, [], set()
        if lines:
            self._guarded(lines, lambda: self._upsert(lines))

    def _guarded(self, batch: list[Line], write) -> bool:  # noqa: ANN001 - () -> counts
        """``write`` in a savepoint; refused by PostgreSQL, the batch line by line instead (returns False)."""
        try:
            with self.w.main.transaction():
                counts = write()
        except psycopg.Error as exc:
            if not refused_value(exc):
                raise
            log.info(
                "batch of %d lines refused by PostgreSQL (%s); redoing it line by line", len(batch), type(exc).__name__
            )
            self.result.add(self._write_line_by_line(batch))
            return False
        self.result.add(counts)
        return True

    def _write(self, batch: list[Line], *, direct: bool, defer: list[Line] | None = None) -> dict[str, int]:
        """Classify and write a batch; with ``defer``, its changed lines go there for a later round."""
        w = self.w
        # An erased key comes back only on evidence that the shop still holds it (see _not_stale_erased).
        kept = [x for x in batch if _not_stale_erased(x, self.erased, self.as_of)] if self.erased else batch
        c = classify.classify(w.main, w.spec, kept)
        w.ensure_quarters(x.quarter for x in (*c.new, *c.changed))
        new, changed = (c.new, c.changed) if direct else ([], c.new + c.changed)
        counts = {
            "inserted": len(new),
            "updated": 0,
            "unchanged": c.unchanged,
            "skipped_older": c.older + len(batch) - len(kept),
            "child_rows": w.copy_new(new) if new else 0,
        }
        if changed and defer is not None:
            defer.extend(changed)
        elif changed:
            for k, v in self._upsert(changed).items():
                counts[k] += v
        w.record_seen(x.key for x in batch)
        return counts

    def _upsert(self, changed: list[Line]) -> dict[str, int]:
        ins, upd, kids = self.w.upsert_changed(changed)
        return {"inserted": ins, "updated": upd, "skipped_older": len(changed) - ins - upd, "child_rows": kids}

    def _write_line_by_line(self, batch: list[Line]) -> dict[str, int]:
        total = dict.fromkeys(("inserted", "updated", "unchanged", "skipped_older", "child_rows"), 0)
        for x in batch:
            try:
                exact = exact_line(x, self.w.spec.name, self.keep_raw, self.result.run_id, self.window, self.archived)
                with self.w.main.transaction():
                    counts = self._write([exact], direct=False)
            except psycopg.Error as exc:
                if not refused_value(exc):
                    raise
                reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                self.rejects.add(x.line_no, x.text, f"refused by PostgreSQL: {reason}")
                continue
            except RowError as exc:  # the exact mapping names the field
                self.rejects.add(x.line_no, x.text, str(exc))
                continue
            for k, v in counts.items():
                total[k] += v
        return total


def _not_stale_erased(x: Line, erased: dict[str, datetime], as_of: datetime | None) -> bool:
    """Evidence that the shop still holds an erased key: a snapshot taken after the erasure (its job was
    created later) holds the line, or the line changed after it. A snapshot from before the erasure (a
    retried job, a reused result) or a file of unknown age (``as_of`` None) is no such evidence."""
    at = erased.get(x.key)
    if at is None:
        return True
    return (as_of is not None and as_of > at) or (x.changed is not None and x.changed > at)


def _count(conn: psycopg.Connection, table: str) -> int:
    return conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))).fetchone()[0]


def _finish_run(conn: psycopg.Connection, r: ApplyResult) -> None:
    conn.execute(
        """UPDATE snapshot_runs SET status = 'succeeded', finished_at = now(), lines = %s, inserted = %s,
             updated = %s, unchanged = %s, rejected = %s, skipped_older = %s, deleted = %s,
             child_rows = %s WHERE id = %s""",
        (r.lines, r.inserted, r.updated, r.unchanged, r.rejected, r.skipped_older, r.deleted, r.child_rows, r.run_id),
    )
