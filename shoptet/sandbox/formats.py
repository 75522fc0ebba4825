"""Shoptet value formats (reference §4): date-times with `+hhmm` offsets, fixed-decimal strings."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from email.utils import formatdate
from zoneinfo import ZoneInfo

PRAGUE = ZoneInfo("Europe/Prague")

# Fixed anchor of all generated data, so the same seed gives the same bytes on any day.
REFERENCE = datetime(2026, 10, 1, 0, 0, 0, tzinfo=PRAGUE)

_DT_RE = re.compile(r"^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.\d+)?(Z|[+-]\d{2}:?\d{2})?$")


def fmt_dt(epoch: float) -> str:
    """`2026-09-14T10:21:07+0200` in Europe/Prague, whole seconds."""
    return datetime.fromtimestamp(int(epoch), PRAGUE).strftime("%Y-%m-%dT%H:%M:%S%z")


def fmt_date(epoch: float) -> str:
    return datetime.fromtimestamp(int(epoch), PRAGUE).strftime("%Y-%m-%d")


def parse_dt(value: str) -> float:
    """Parse a query date-time into epoch seconds.

    Accepts `+0100`, `+01:00`, `Z` and no offset (Prague local time, as the SDK allows).
    A space where the offset sign should be means the client forgot to percent-encode `+`;
    that is rejected so client bugs surface in tests.
    """
    m = _DT_RE.match(value)
    if not m:
        raise ValueError(value)
    y, mo, d, h, mi, s, off = m.groups()
    if off is None:
        tz: tzinfo = PRAGUE
    elif off == "Z":
        tz = UTC
    else:
        digits = off[1:].replace(":", "")
        delta = timedelta(hours=int(digits[:2]), minutes=int(digits[2:]))
        tz = timezone(-delta if off[0] == "-" else delta)
    return datetime(int(y), int(mo), int(d), int(h), int(mi), int(s), tzinfo=tz).timestamp()


def http_date(epoch: float) -> str:
    """RFC 7231 HTTP-date, e.g. `Mon, 01 Jul 2024 12:01:11 GMT`."""
    return formatdate(epoch, usegmt=True)


def money(cents: int) -> str:
    return f"{cents / 100:.2f}"


def amount(milli: int) -> str:
    return f"{milli / 1000:.3f}"
