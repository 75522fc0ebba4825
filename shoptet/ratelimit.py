"""Rate limiting and retry policy for the Shoptet API (reference §3).

Shoptet enforces two limits per token: at most 3 concurrent connections (excess -> 429) and a leaky
bucket of 200 drops draining 10 drops/s (full -> 429 + ``Retry-After: <HTTP-date>``); every response
carries ``X-RateLimit-Bucket-Filling: <n>/<max>``. The client therefore

* holds one of ``max_connections`` (3) semaphore slots per HTTP call, shared by every thread and
  every client instance in the process that uses the same base URL + token (see ``shared_limiter``);
  Shoptet's cap is per token, not per process, so flows also inject a ``SlotProvider`` backed by
  PostgreSQL advisory locks (``db.api_slots``) that holds the cap across processes and machines;
* after each response, when the bucket is above ``bucket_threshold`` (70 %) of its capacity, pauses
  all callers for ``(filling - threshold * capacity) / 10`` s, the time the bucket needs to drain back
  to the threshold (at most (200 - 140) / 10 = 6 s);
* on 429 pauses all callers until ``Retry-After`` (HTTP-date + 1 s for its whole-second resolution,
  or delta seconds; a past, missing or unparsable value falls back to the exponential backoff). The
  wait is honoured in full - retrying early only earns another 429 and burns the 429 budget - unless
  it is longer than ``max_retry_after`` or than the time left before the caller's deadline
  (``ShoptetClient.deadline``, e.g. the snapshot job's); then ``RateLimitedError`` is raised at once;
* waits ``lock_wait`` (5 s, plus up to 1 s jitter) after a 423: Shoptet locks an identical write for
  about 5 s (reference §2, §9.16), so an immediate retry would be locked again;
* retries transient failures (5xx, 423, timeouts, connection errors) with exponential backoff and
  full jitter: ``uniform(0, min(backoff_cap, backoff_base * 2**attempt))``; never 400/401/403/404/
  409/413/422.

Worst case for ONE logical request with the defaults (max_retries=4, max_429_retries=8,
backoff_base=1 s, backoff_cap=30 s, max_retry_after=3600 s, timeout=30 s):

* HTTP calls: 1 + max_retries + max_429_retries = 1 + 4 + 8 = **13** (the two retry budgets are
  counted separately; whichever runs out first raises; ``tests/unit/test_client_http.py`` checks it).
* Waiting (sleep) time: transient backoff <= 1 + 2 + 4 + 8 = 15 s, or <= 6 + 6 + 6 + 8 = 26 s when
  some of them are 423 waits; 429
  waits <= 8 x max_retry_after, and never past the caller's deadline; bucket pacing <= 6 s before
  each of the 13 calls = 78 s; plus up to 13 x the httpx timeout (30 s per connect/read/write phase)
  spent inside the calls themselves. Pauses are shared, so a 429 seen by another thread sharing the
  token can delay this request further.
"""

from __future__ import annotations

import hashlib
import random
import threading
import weakref
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Protocol

Clock = Callable[[], float]
Sleep = Callable[[float], None]

BUCKET_DRAIN_PER_SECOND = 10.0


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int = 4  # transient: 5xx, 423, timeouts, connection errors
    max_429_retries: int = 8
    backoff_base: float = 1.0
    backoff_cap: float = 30.0
    #: Longest Retry-After we sit out (also bounded by the caller's deadline); longer -> raise at once.
    max_retry_after: float = 3600.0
    bucket_threshold: float = 0.7
    #: Seconds to wait after a 423 (Shoptet locks an identical write for ~5 s).
    lock_wait: float = 5.0


def parse_bucket_filling(value: str | None) -> tuple[float, float] | None:
    """``"120/200"`` -> (120.0, 200.0); None when absent or malformed."""
    if not value:
        return None
    try:
        current, _, maximum = value.partition("/")
        filling, capacity = float(current), float(maximum)
    except ValueError:
        return None
    if capacity <= 0 or filling < 0:
        return None
    return filling, capacity


def bucket_wait(
    filling: float,
    capacity: float,
    *,
    threshold: float = 0.7,
    drain_per_second: float = BUCKET_DRAIN_PER_SECOND,
) -> float:
    """Seconds until the bucket drains back to ``threshold * capacity`` (0 when at or below it)."""
    target = threshold * capacity
    excess = min(filling, capacity) - target
    return excess / drain_per_second if excess > 0 else 0.0


def parse_retry_after(value: str | None, now: float, *, date_slack: float = 1.0) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (delta seconds or HTTP-date); None if unusable.

    HTTP-dates have whole-second resolution and the server may have truncated the instant, so
    ``date_slack`` is added: retrying a fraction of a second early would just burn a 429 retry.
    A date in the past gives 0.0; callers treat that like a missing header (clock skew).
    """
    if value is None or not value.strip():
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if seconds == seconds else None  # reject NaN
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None or when.tzinfo is None:  # RFC 9110 dates are GMT; a naive one is unusable
        return None
    remaining = when.timestamp() - now
    return remaining + date_slack if remaining > -date_slack else 0.0


def backoff_delay(attempt: int, rng: random.Random, *, base: float = 1.0, cap: float = 30.0) -> float:
    """Exponential backoff with full jitter for retry number ``attempt`` (0-based)."""
    return rng.uniform(0.0, min(cap, base * 2 ** min(attempt, 32)))


class RateLimiter:
    """Connection slots plus a shared "pause until" instant, safe across threads."""

    def __init__(self, max_connections: int = 3) -> None:
        if max_connections < 1:
            raise ValueError("max_connections must be >= 1")
        self.max_connections = max_connections
        self._slots = threading.BoundedSemaphore(max_connections)
        self._lock = threading.Lock()
        self._pause_until = 0.0
        self._in_flight = 0
        self.peak_in_flight = 0  # observability (and tests): max concurrent calls seen

    def pause_until(self, instant: float) -> None:
        """Make every caller wait until ``instant`` (clock seconds) before its next call."""
        with self._lock:
            self._pause_until = max(self._pause_until, instant)

    def wait_turn(self, clock: Clock, sleep: Sleep) -> float:
        """Sleep out any pending pause; returns the seconds slept (once, so a stub sleep cannot spin)."""
        with self._lock:
            remaining = self._pause_until - clock()
        if remaining > 0:
            sleep(remaining)
            return remaining
        return 0.0

    @contextmanager
    def slot(self) -> Iterator[None]:
        """Hold one of the ``max_connections`` connection slots."""
        with self._slots:
            with self._lock:
                self._in_flight += 1
                self.peak_in_flight = max(self.peak_in_flight, self._in_flight)
            try:
                yield
            finally:
                with self._lock:
                    self._in_flight -= 1


_registry: weakref.WeakValueDictionary[tuple[object, ...], RateLimiter] = weakref.WeakValueDictionary()
_registry_lock = threading.Lock()


def shared_limiter(base_url: str, token: str, max_connections: int, clock: Clock) -> RateLimiter:
    """One limiter per (base URL, token, clock) in the process: Shoptet counts connections per token,
    and flows may build a fresh client in every task thread. The token is keyed by its digest only."""
    key = (base_url, hashlib.sha256(token.encode()).hexdigest(), max_connections, clock)
    with _registry_lock:
        limiter = _registry.get(key)
        if limiter is None:
            limiter = RateLimiter(max_connections)
            _registry[key] = limiter
        return limiter


class SlotProvider(Protocol):
    """Something that hands out one of a token's connection slots across processes.

    ``slot(key)`` blocks until one of the token's slots is free and holds it while inside; ``key`` is
    ``token_fingerprint(...)``, never the token. ``db.api_slots.AdvisorySlots`` implements it with
    PostgreSQL advisory locks; without one, the in-process ``RateLimiter`` is the only guard.
    """

    def slot(self, key: str) -> AbstractContextManager[None]: ...


def token_fingerprint(base_url: str, token: str) -> str:
    """A stable, non-reversible name for (API host, token): safe to store, log or hash into lock keys."""
    digest = hashlib.sha256(f"shoptet-token\0{base_url.rstrip('/')}\0{token}".encode()).hexdigest()
    return digest[:32]
