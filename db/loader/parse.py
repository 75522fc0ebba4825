"""Blocks of snapshot lines → COPY-ready rows. Runs in worker processes (or in a thread for small files).

Parsing and mapping JSON is the loader's Python-bound part. So worker processes take a block of whole
lines (bytes, as read), split it, decode each line (msgspec straight into the wanted fields for orders,
``db/mapping_fast.py``; orjson + ``db/mapping.py`` otherwise), and format the rows in COPY's text format
with psycopg's own C formatter, back to back in one buffer per table. The writer classifies lines by
key and, on a first import, streams those buffers to COPY whole. This module imports no database
connection code, so workers start fast.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime

import orjson
import psycopg
from psycopg._copy_base import format_row_text  # psycopg's C COPY formatter (the one write_row uses)
from psycopg.adapt import Dumper, Transformer

from db.dates import DateWindow
from db.mapping import ENTITIES, EntitySpec, Mapped, RowError, content_hash, validate
from db.mapping_fast import NotFast, order_rows_fast
from db.mapping_values import strip_nul
from db.partitions.rollover import Quarter


class JsonText(bytes):
    """A snapshot line going to the ``raw`` column as it was read: no decode, no re-encode."""


class _JsonTextDumper(Dumper):
    # COPY still escapes it; skipping the str round trip saves ~4 s of CPU per GB of JSON.
    oid = psycopg.adapters.types["json"].oid

    def dump(self, obj: JsonText) -> bytes:
        return obj


psycopg.adapters.register_dumper(JsonText, _JsonTextDumper)


@dataclass(slots=True)
class Line:
    """One mapped line, its rows already in COPY text format (views into the chunk's buffers)."""

    line_no: int
    key: str
    changed: datetime | None
    quarter: tuple[int, int] | None
    hash: str
    parent: bytes | memoryview  # one COPY row: the entity's columns, content_hash, raw, run_id
    children: bytes | memoryview  # zero or more COPY rows of the child table
    n_children: int
    text: bytes | memoryview  # the line as read (for rejects and the line-by-line fallback)


@dataclass(slots=True)
class Chunk:
    """What a worker sends back for one block of lines: flat buffers plus one list entry per line.

    Flat buffers and lists of plain values pickle an order of magnitude faster than one object per
    line, and the block itself stays with the reader (it sent it), so line text never travels back.
    """

    parents: bytes  # the good lines' parent rows, back to back
    children: bytes
    line_nos: list[int]
    keys: list[str]
    changed: list[datetime | None]
    quarters: list[tuple[int, int] | None]
    hashes: list[str]
    spans: list[int]  # per good line: start, end in the block
    parent_ends: list[int]
    child_ends: list[int]
    n_children: list[int]
    rejects: list[tuple[int, int, int, str]]  # (line no, start, end in the block, reason)
    read: int  # non-blank lines in this chunk
    newlines: int  # line ends in the block: the next block's first line number follows from it
    end_position: int  # compressed bytes read when the chunk was cut (for progress)
    beyond_retention: int = 0  # good lines of an archived quarter: header kept, items dropped
    nul_stripped: int = 0  # good lines whose text values had a NUL (\u0000) removed
    # Lines not parsed: their hash is a stored row's (``db/loader/known.py``), to be confirmed by the apply.
    skipped_line_nos: list[int] = field(default_factory=list)
    skipped_spans: list[int] = field(default_factory=list)  # per skipped line: start, end in the block
    skipped_keys: list[str] = field(default_factory=list)
    skipped_hashes: list[str] = field(default_factory=list)
    # Set by the reader once the chunk is back; line numbers above count from 0 within the block.
    block: bytes = b""
    first_line_no: int = 1

    def lines(self) -> list[Line]:
        block, parents, children = memoryview(self.block), memoryview(self.parents), memoryview(self.children)
        out = []
        p0 = c0 = 0
        spans = self.spans
        base = self.first_line_no
        for i, (p1, c1) in enumerate(zip(self.parent_ends, self.child_ends, strict=True)):
            out.append(
                Line(
                    base + self.line_nos[i],
                    self.keys[i],
                    self.changed[i],
                    self.quarters[i],
                    self.hashes[i],
                    parents[p0:p1],
                    children[c0:c1],
                    self.n_children[i],
                    block[spans[2 * i] : spans[2 * i + 1]],
                )
            )
            p0, c0 = p1, c1
        return out

    def skipped_text(self, i: int) -> bytes:
        """The text of skipped line ``i``, as read."""
        return self.block[self.skipped_spans[2 * i] : self.skipped_spans[2 * i + 1]]

    def rejected_lines(self) -> list[tuple[int, bytes, str]]:
        return [(self.first_line_no + n, self.block[a:b], reason) for n, a, b, reason in self.rejects]


def _format(
    spec: EntitySpec,
    m: Mapped,
    text: bytes,
    digest: str,
    keep_raw: bool,
    run_id: int,
    tx: Transformer,
    parents: bytearray,
    children: bytearray,
) -> bool:
    """Format the line's rows; True when NUL had to be removed from a text value (counted as nul_stripped)."""
    stripped = b"\\u0000" in text and _strip_nul(m, spec.key)  # JSON can only carry a NUL as this escape
    format_row_text((*m.row, digest, JsonText(text) if keep_raw else None, run_id), tx, parents)
    for c in m.children:
        format_row_text(c, tx, children)
    return stripped


def _strip_nul(m: Mapped, key: str) -> bool:
    """NUL out of the typed columns (the raw ``json`` column keeps the line as sent: it can hold ``\\u0000``)."""
    m.row, parent = strip_nul(m.row)
    kids = [strip_nul(c) for c in m.children]
    m.children = [c for c, _ in kids]
    m.key = m.key.replace("\x00", "")
    if not m.key:
        raise RowError(f"{key}: the key holds nothing but NUL characters")
    return parent or any(hit for _, hit in kids)


_FAST = {"orders": order_rows_fast}  # decoders for the big entity; the rest map from dicts


def _map_line(spec: EntitySpec, text: bytes, exact: bool) -> Mapped:
    fast = None if exact else _FAST.get(spec.name)
    if fast is not None:
        try:
            return fast(text)
        except NotFast:
            pass  # an undocumented shape: order_rows below handles it or names what is wrong
    try:
        obj = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        # Also on the exact path: msgspec's fast path skips fields it does not map without checking their
        # UTF-8, so a line it took can still be invalid JSON here (PostgreSQL refused its raw column).
        raise RowError(f"invalid JSON: {exc}") from None
    if type(obj) is not dict:
        raise RowError(f"expected a JSON object, got {type(obj).__name__}")
    m = spec.mapper(obj)
    if exact:
        m.row = validate(m.row, spec.columns)
        m.children = [validate(c, spec.child_columns) for c in m.children]
    return m


def _lines(block: bytes, first_line_no: int) -> Iterator[tuple[int, int, int]]:
    """(line no, start, end) of each non-blank line of the block, surrounding whitespace excluded."""
    start = 0
    line_no = first_line_no
    n = len(block)
    while start < n:
        end = block.find(b"\n", start)
        if end < 0:
            end = n
        a, b = start, end
        while a < b and block[a] in _SPACE:
            a += 1
        while b > a and block[b - 1] in _SPACE:
            b -= 1
        if a < b:
            yield line_no, a, b
        line_no += 1
        start = end + 1


_SPACE = frozenset(b" \t\r\n\x0b\x0c")


def _dated(m: Mapped, window: DateWindow) -> tuple[datetime | None, tuple[int, int] | None]:
    """The line's changeTime in UTC and creationTime's quarter, or RowError when one is outside ``window``.

    In UTC: every value then shares one tzinfo, which pickle writes once per chunk instead of once
    per line (a chunk pickles in 0.3 ms instead of 1.3 ms).
    """
    try:
        changed = None if m.changed is None else window.check(m.changed, "changeTime")
        quarter = None if m.created is None else Quarter.of(window.check(m.created, "creationTime")).key
    except ValueError as exc:
        raise RowError(str(exc)) from None
    return changed, quarter


def _kept(
    m: Mapped, window: DateWindow, archived: frozenset[tuple[int, int]]
) -> tuple[datetime | None, tuple[int, int] | None, bool]:
    """``_dated``, and the retention horizon: a line of an archived quarter keeps its parent row (the
    order header: customer metrics still count it) but loses its children (the items went to the archive
    with their partition), and needs no partition. Returns (changeTime, quarter, beyond retention)."""
    changed, quarter = _dated(m, window)
    if quarter is None or quarter not in archived:
        return changed, quarter, False
    m.children = []
    return changed, None, True


# What the reader hands to process_chunk: (entity, block of whole lines, keep raw JSON, run id,
# compressed bytes read so far, accepted dates[, archived quarters[, known hashes]]). A tuple: it is pickled
# to a worker per block. The archived quarters (``db.partitions.rollover.archived_quarters``) may be left
# out: none. Known hashes ({content hash: key}, ``db/loader/known.py``): lines to skip unparsed; None: none.
BlockArgs = tuple  # (str, bytes, bool, int, int, DateWindow[, frozenset[tuple[int, int]][, dict | None]])
NO_ARCHIVE: frozenset[tuple[int, int]] = frozenset()


def process_chunk(args: BlockArgs) -> Chunk:
    """Parse, map and format one block of lines; a line that cannot be mapped is a reject.

    A line whose hash is in the block's known hashes is not parsed: it goes to the ``skipped_*`` lists
    with the stored row's key (unless it holds a ``\\u0000`` escape: parsed, so ``nul_stripped`` counts it).
    """
    entity, block, keep_raw, run_id, end_position, window, *more = args
    archived = more[0] if more else NO_ARCHIVE
    known = more[1] if len(more) > 1 else None
    spec = ENTITIES[entity]
    tx = Transformer()
    parents, children = bytearray(), bytearray()
    c = Chunk(b"", b"", [], [], [], [], [], [], [], [], [], [], 0, block.count(b"\n"), end_position)
    for line_no, a, b in _lines(block, 0):
        c.read += 1
        text = block[a:b]
        p_len, c_len = len(parents), len(children)
        digest = content_hash(text)
        if known and (key := known.get(digest)) is not None and b"\\u0000" not in text:
            c.skipped_line_nos.append(line_no)
            c.skipped_spans += (a, b)
            c.skipped_keys.append(key)
            c.skipped_hashes.append(digest)
            continue
        try:
            try:
                m = _map_line(spec, text, exact=False)
                changed, quarter, beyond = _kept(m, window, archived)
                stripped = _format(spec, m, text, digest, keep_raw, run_id, tx, parents, children)
            except (TypeError, ValueError, psycopg.DataError, psycopg.ProgrammingError) as exc:
                if isinstance(exc, RowError | orjson.JSONDecodeError):
                    raise
                # A value psycopg cannot format (a JSON object where text goes, say): the exact path decides.
                del parents[p_len:], children[c_len:]
                m = _map_line(spec, text, exact=True)
                changed, quarter, beyond = _kept(m, window, archived)
                stripped = _format(spec, m, text, digest, keep_raw, run_id, tx, parents, children)
        except orjson.JSONDecodeError as exc:
            del parents[p_len:], children[c_len:]
            c.rejects.append((line_no, a, b, f"invalid JSON: {exc}"))
            continue
        except RowError as exc:
            del parents[p_len:], children[c_len:]
            c.rejects.append((line_no, a, b, str(exc)))
            continue
        except Exception as exc:  # noqa: BLE001 - anything else about this value: reject the line, say why
            del parents[p_len:], children[c_len:]
            c.rejects.append((line_no, a, b, f"unconvertible value: {type(exc).__name__}: {exc}"))
            continue
        c.beyond_retention += beyond
        c.nul_stripped += stripped
        c.line_nos.append(line_no)
        c.keys.append(m.key)
        c.changed.append(changed)
        c.quarters.append(quarter)
        c.hashes.append(digest)
        c.spans += (a, b)
        c.parent_ends.append(len(parents))
        c.child_ends.append(len(children))
        c.n_children.append(len(m.children))
    c.parents, c.children = bytes(parents), bytes(children)
    return c


def exact_line(
    line: Line, entity: str, keep_raw: bool, run_id: int, window: DateWindow, archived: frozenset = NO_ARCHIVE
) -> Line:
    """The line re-mapped with every value validated (raises RowError naming the field)."""
    spec = ENTITIES[entity]
    text = bytes(line.text)
    m = _map_line(spec, text, exact=True)
    changed, quarter, _ = _kept(m, window, archived)
    parents, children = bytearray(), bytearray()
    _format(spec, m, text, line.hash, keep_raw, run_id, Transformer(), parents, children)
    return Line(
        line.line_no, m.key, changed, quarter, line.hash, bytes(parents), bytes(children), len(m.children), text
    )
