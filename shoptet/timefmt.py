"""Shoptet date-time format: ``YYYY-MM-DDThh:mm:ss+hhmm`` (no colon, no fractions, only ``+`` offsets)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

_FORMAT = "%Y-%m-%dT%H:%M:%S%z"


def format_datetime(value: datetime) -> str:
    """Format an aware datetime for a Shoptet query parameter.

    Naive datetimes are refused (their meaning depends on the host's zone). Negative offsets are
    converted to UTC because the documented pattern only allows ``+hhmm``. Microseconds are dropped:
    Shoptet times are whole seconds, so truncation keeps inclusive bounds exact.
    """
    offset = value.utcoffset()
    if offset is None:
        raise ValueError(f"naive datetime {value.isoformat()!r}: pass a timezone-aware datetime")
    if offset < timedelta(0) or offset % timedelta(minutes=1):
        value = value.astimezone(UTC)
    return value.replace(microsecond=0).strftime(_FORMAT)


def parse_datetime(value: str | None) -> datetime | None:
    """Parse a Shoptet date-time (``+0200``; also tolerates ``+02:00`` and ``Z``); None and "" stay None.

    The one parser of Shoptet times: the API client's and the snapshot loader's (``db/mapping.py``).
    ``fromisoformat`` reads ``+0200`` since Python 3.11, several times faster than ``strptime``.
    Raises ValueError for anything else, also for a time without an offset.
    """
    if value is None or value == "":
        return None
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        raise ValueError(f"date-time without offset: {value[:40]!r}")
    return parsed
