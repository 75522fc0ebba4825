"""Shoptet's two rate limits (reference §3): a per-token leaky bucket and a per-token connection cap."""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

from .clock import Clock


@dataclass
class Limits:
    """Live-tunable limits; defaults are Shoptet's documented values."""

    enabled: bool = True
    bucket_size: int = 200
    drain_per_second: float = 10.0
    max_concurrent: int = 3
    bytes_per_drop: int = 20_000  # each request costs 1 drop + 1 per this many response bytes
    retry_after_seconds: bool = False  # send `Retry-After: <seconds>` instead of an HTTP-date


class RateLimiter:
    def __init__(self, clock: Clock, limits: Limits) -> None:
        self.clock = clock
        self.limits = limits
        self._lock = threading.Lock()
        self._level: dict[str, tuple[float, float]] = {}  # token -> (drops, at epoch)
        self._inflight: dict[str, int] = {}
        #: Most requests of one token open at once, counting the ones refused for it (tests read it
        #: to prove a cap held across processes).
        self.peak_attempted: dict[str, int] = {}

    def _drained(self, token: str, now: float) -> float:
        level, at = self._level.get(token, (0.0, now))
        return max(0.0, level - max(0.0, now - at) * self.limits.drain_per_second)

    # concurrency: real counting, because nginx `limit_conn` counts open requests
    def enter(self, token: str) -> bool:
        with self._lock:
            n = self._inflight.get(token, 0)
            self.peak_attempted[token] = max(self.peak_attempted.get(token, 0), n + 1)
            if self.limits.enabled and n >= self.limits.max_concurrent:
                return False
            self._inflight[token] = n + 1
            return True

    def leave(self, token: str) -> None:
        with self._lock:
            self._inflight[token] = max(0, self._inflight.get(token, 1) - 1)

    def wait_seconds(self, token: str) -> float:
        """0 if the bucket has room for a request, else simulated seconds until it has."""
        if not self.limits.enabled:
            return 0.0
        now = self.clock.time()
        with self._lock:
            level = self._drained(token, now)
        room_needed = level + 1 - self.limits.bucket_size
        return 0.0 if room_needed <= 0 else room_needed / self.limits.drain_per_second

    def charge(self, token: str, response_bytes: int) -> int:
        """Add the measured cost of a finished request; returns the current filling."""
        now = self.clock.time()
        cost = 1 + response_bytes // max(1, self.limits.bytes_per_drop)
        with self._lock:
            level = min(float(self.limits.bucket_size), self._drained(token, now) + cost)
            self._level[token] = (level, now)
            return math.ceil(level)

    def filling(self, token: str | None) -> int:
        if token is None:
            return 0
        with self._lock:
            return math.ceil(self._drained(token, self.clock.time()))

    def header(self, token: str | None, filling: int | None = None) -> str:
        return f"{self.filling(token) if filling is None else filling}/{self.limits.bucket_size}"

    def reset(self) -> None:
        with self._lock:
            self._level.clear()
            self.peak_attempted.clear()
