"""Time sources for the sandbox.

Every time-dependent behaviour of the fake (job completion, bucket drain, Retry-After, the
30-day change horizon, result expiry) reads one of these clocks, so tests can move time
forward instead of sleeping.
"""

from __future__ import annotations

import threading
import time as _time
from datetime import UTC, datetime
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """Aware UTC datetime."""
        ...

    def time(self) -> float:
        """Epoch seconds."""
        ...

    def sleep(self, seconds: float) -> None:
        """Let `seconds` of simulated time pass."""
        ...


class RealClock:
    """Wall-clock anchored at creation; simulated time runs `scale`x faster than real time."""

    def __init__(self, scale: float = 1.0) -> None:
        if scale <= 0:
            raise ValueError("scale must be positive")
        self.scale = scale
        self._epoch0 = _time.time()
        self._mono0 = _time.monotonic()

    def time(self) -> float:
        return self._epoch0 + (_time.monotonic() - self._mono0) * self.scale

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.time(), UTC)

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            _time.sleep(seconds / self.scale)


class ManualClock:
    """A clock that only moves when told to; `sleep` is `advance`, so clients can share it."""

    def __init__(self, start: datetime) -> None:
        if start.tzinfo is None:
            raise ValueError("ManualClock needs an aware datetime")
        self._t = start.timestamp()
        self._lock = threading.Lock()

    def time(self) -> float:
        with self._lock:
            return self._t

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.time(), UTC)

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("time does not run backwards")
        with self._lock:
            self._t += seconds

    def sleep(self, seconds: float) -> None:
        self.advance(max(0.0, seconds))

    def set(self, when: datetime) -> None:
        with self._lock:
            self._t = when.timestamp()
