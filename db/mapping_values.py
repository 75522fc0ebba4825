"""Snapshot values → column values: the key, date-time and typed-value parsers the mapping uses.

Pure functions, no database. Each raises :class:`RowError` naming the field, so one bad value rejects
one line and the reject says which field it was.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from shoptet.timefmt import parse_datetime

_NUMBER = re.compile(r"-?\d+(?:\.\d+)?").fullmatch


class RowError(ValueError):
    """The line cannot become a row; the message is the reason kept in ``snapshot_rejects``."""


def parse_ts(value: Any, field: str) -> datetime | None:
    """A line's Shoptet date-time (``2026-09-14T10:21:07+0200``, offset required), or RowError naming ``field``."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise RowError(f"{field}: expected a date-time string, got {type(value).__name__}")
    try:
        parsed = parse_datetime(value) if value else None
    except ValueError:
        parsed = None
    if parsed is None:
        raise RowError(f"{field}: invalid date-time {value[:40]!r} (Shoptet's form: 2026-09-14T10:21:07+0200)")
    return parsed


def content_hash(line: bytes) -> str:
    """Change detection for rows whose changeTime did not move (sha256: fastest here with SHA-NI)."""
    return hashlib.sha256(line).hexdigest()


# --- value validation (the slow, exact path) -----------------------------------------------------------


def _num(value: Any, field: str) -> str | None:
    """Money, amounts and rates: strings with fixed decimals, or (amount, seen live) JSON numbers."""
    if value is None:
        return None
    if isinstance(value, str):
        if _NUMBER(value):
            return value
        raise RowError(f"{field}: invalid number {value[:40]!r}")
    if isinstance(value, bool):
        raise RowError(f"{field}: expected a number, got a boolean")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and math.isfinite(value):
        return repr(value)
    raise RowError(f"{field}: expected a number, got {str(value)[:40]!r}")


def _int(value: Any, field: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lstrip("-").isdigit():
        return int(value)
    raise RowError(f"{field}: expected an integer, got {str(value)[:40]!r}")


def _text(value: Any, field: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (dict, list)):
        return orjson.dumps(value).decode()
    return str(value)  # e.g. an EAN sent as a JSON number


def _bool(value: Any, field: str) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    raise RowError(f"{field}: expected true/false, got {str(value)[:40]!r}")


def _ts(value: Any, field: str) -> Any:
    parse_ts(value, field)
    return value


_CHECK: dict[str, Callable[[Any, str], Any]] = {"t": _text, "n": _num, "i": _int, "b": _bool, "ts": _ts}


def validate(row: tuple, columns: tuple[Column, ...]) -> tuple:
    """Convert each value to what its column takes, or raise RowError naming the column."""
    return tuple(_CHECK[c.kind](v, c.name) for v, c in zip(row, columns, strict=True))


@dataclass(frozen=True)
class Column:
    name: str
    kind: str  # t(ext) n(umeric) i(nteger) b(oolean) ts (timestamptz)


def columns(spec: str) -> tuple[Column, ...]:
    """``"code:t guid:t created_at:ts"`` → Columns."""
    return tuple(Column(*item.split(":")) for item in spec.split())


def _obj(value: Any, field: str) -> dict:
    if value is None:
        return {}
    if isinstance(value, dict):
        return value
    raise RowError(f"{field}: expected an object, got {type(value).__name__}")


def _key(value: Any, field: str) -> str:
    if value is None or value == "":
        raise RowError(f"missing key {field}")
    if isinstance(value, (dict, list, bool, float)):
        raise RowError(f"{field}: invalid key {str(value)[:40]!r}")
    return str(value)


def strip_nul(row: tuple) -> tuple[tuple, bool]:
    """The row with NUL removed from its text values (PostgreSQL text cannot hold one), and whether any was."""
    if not any(type(v) is str and "\x00" in v for v in row):
        return row, False
    return tuple(v.replace("\x00", "") if type(v) is str else v for v in row), True


NO_ORDER_DATE = (
    "creationTime and changeTime are both null: an order's items are partitioned by its creation time "
    "(its changeTime stands in when the shop sends no creationTime), and this order has neither"
)


def order_created(created_s: Any, created: datetime | None, changed_s: Any, changed: datetime | None) -> tuple:
    """An order's creation time, or its changeTime when the shop sent none (the schema allows a null
    creationTime; raw keeps the null, so ``raw->>'creationTime' IS NULL`` finds those orders)."""
    if created is not None:
        return created_s, created
    if changed is None:
        raise RowError(NO_ORDER_DATE)
    return changed_s, changed
