"""The window of dates a snapshot line may carry: a line outside it is a reject, never a partition.

A Shoptet shop has no order from before 2000 nor one dated years ahead; such a date is a data error
(``0001-01-01T00:30+0100`` even overflows Python's datetime once moved to UTC). Rejecting it keeps one
bad line from stopping an apply and keeps absurd quarters (year 1, year 9999) out of ``order_items``.
The operator can widen the window with the ``dates_accepted_from`` and ``dates_accepted_ahead_days``
settings.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from db import clock

DEFAULT_FROM = date(2000, 1, 1)
DEFAULT_AHEAD_DAYS = 365


@dataclass(frozen=True, slots=True)
class DateWindow:
    earliest: datetime  # inclusive, UTC
    latest: datetime  # inclusive, UTC

    @classmethod
    def default(cls, now: datetime | None = None) -> DateWindow:
        return cls.of(DEFAULT_FROM, DEFAULT_AHEAD_DAYS, now)

    @classmethod
    def of(cls, accepted_from: date, ahead_days: int, now: datetime | None = None) -> DateWindow:
        now = now or clock.now()
        earliest = datetime(accepted_from.year, accepted_from.month, accepted_from.day, tzinfo=UTC)
        return cls(earliest, now.astimezone(UTC) + timedelta(days=ahead_days))

    def check(self, ts: datetime, field: str) -> datetime:
        """``ts`` in UTC, or ValueError naming the field and the window."""
        try:
            utc = ts.astimezone(UTC)
        except OverflowError:
            utc = None
        if utc is None or not self.earliest <= utc <= self.latest:
            raise ValueError(
                f"{field} {ts.isoformat()} is outside the accepted dates {self.earliest:%Y-%m-%d} to "
                f"{self.latest:%Y-%m-%d} (settings dates_accepted_from / dates_accepted_ahead_days)"
            )
        return utc

    def contains(self, ts: datetime) -> bool:
        try:
            return self.earliest <= ts.astimezone(UTC) <= self.latest
        except OverflowError:
            return False
