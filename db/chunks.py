"""Chunks of snapshot lines → COPY-ready rows. Runs in worker processes (or in a thread for small files).

Parsing and mapping JSON is the loader's Python-bound part; PostgreSQL and the writer need little CPU
of their own. So on a multi-core machine worker processes turn chunks of raw lines into rows already
formatted in COPY's text format (psycopg's own C formatter), and the writer only classifies lines
and streams their bytes. This module imports no database connection code, so workers start fast.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import orjson
import psycopg
from psycopg._copy_base import format_row_text  # psycopg's C COPY formatter (the one write_row uses)
from psycopg.adapt import Dumper, Transformer

from db.mapping import ENTITIES, EntitySpec, Mapped, RowError, content_hash, quarter_of, validate


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
    """One mapped line, its rows already in COPY text format."""

    line_no: int
    key: str
    changed: datetime | None
    quarter: tuple[int, int] | None
    hash: str
    parent: bytes  # one COPY row: the entity's columns, content_hash, raw, run_id
    children: bytes  # zero or more COPY rows of the child table
    n_children: int
    text: bytes  # the line as read (for rejects and the line-by-line fallback)


@dataclass(slots=True)
class Chunk:
    lines: list[Line]
    rejects: list[tuple[int, bytes, str]]  # (line no, line, reason)
    read: int  # non-blank lines in this chunk
    end_position: int  # compressed bytes read when the chunk was cut (for progress)


def format_line(
    spec: EntitySpec, m: Mapped, line_no: int, text: bytes, digest: str, keep_raw: bool, run_id: int,
    tx: Transformer,
) -> Line:  # fmt: skip
    parent = bytearray()
    format_row_text((*m.row, digest, JsonText(text) if keep_raw else None, run_id), tx, parent)
    children = bytearray()
    for c in m.children:
        format_row_text(c, tx, children)
    quarter = quarter_of(m.created) if m.created is not None else None
    return Line(line_no, m.key, m.changed, quarter, digest, bytes(parent), bytes(children), len(m.children), text)


def process_chunk(args: tuple[str, list[tuple[int, bytes]], bool, int, int]) -> Chunk:
    """Parse, map and format one chunk of (line no, line) pairs; a line that cannot be mapped is a reject."""
    entity, raw_lines, keep_raw, run_id, end_position = args
    spec = ENTITIES[entity]
    mapper = spec.mapper
    tx = Transformer()
    lines: list[Line] = []
    rejects: list[tuple[int, bytes, str]] = []
    for line_no, text in raw_lines:
        try:
            obj = orjson.loads(text)
            if type(obj) is not dict:
                raise RowError(f"expected a JSON object, got {type(obj).__name__}")
            mapped = mapper(obj)
            lines.append(format_line(spec, mapped, line_no, text, content_hash(text), keep_raw, run_id, tx))
        except orjson.JSONDecodeError as exc:
            rejects.append((line_no, text, f"invalid JSON: {exc}"))
        except RowError as exc:
            rejects.append((line_no, text, str(exc)))
        except (TypeError, ValueError, psycopg.DataError, psycopg.ProgrammingError) as exc:
            # A value psycopg cannot format (a JSON object where text goes, say): the exact path decides.
            try:
                m = mapper(orjson.loads(text))
                m.row = validate(m.row, spec.columns)
                m.children = [validate(c, spec.child_columns) for c in m.children]
                lines.append(format_line(spec, m, line_no, text, content_hash(text), keep_raw, run_id, tx))
            except RowError as exact:
                rejects.append((line_no, text, str(exact)))
            except Exception:  # noqa: BLE001 - anything else about this value: reject the line, say why
                rejects.append((line_no, text, f"unconvertible value: {type(exc).__name__}: {exc}"))
    return Chunk(lines, rejects, len(raw_lines), end_position)


def exact_line(line: Line, entity: str, keep_raw: bool, run_id: int) -> Line:
    """The line re-mapped with every value validated (raises RowError naming the field)."""
    spec = ENTITIES[entity]
    m = spec.mapper(orjson.loads(line.text))
    m.row = validate(m.row, spec.columns)
    m.children = [validate(c, spec.child_columns) for c in m.children]
    return format_line(spec, m, line.line_no, line.text, line.hash, keep_raw, run_id, Transformer())
