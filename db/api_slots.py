"""Shoptet's 3-connections-per-token cap across processes and machines: PostgreSQL advisory locks.

Shoptet refuses a 4th concurrent connection of one token with 429 (reference §3). The client's own
semaphore only counts inside one process; every hub process and machine shares ``HUB_DATABASE_URL``, so
the database hands out the slots: slot ``n`` of a token is the session advisory lock whose (bigint) key
is a hash of ``shoptet-api-slot:<fingerprint>:<n>``. The fingerprint is ``shoptet.ratelimit.
token_fingerprint`` (a hash of the API host and token), never the token itself, and the key does not
depend on the schema: two hubs in one database that share a token share its 3 slots.

A caller tries every slot; when all are held it waits with growing, jittered gaps (up to ``max_wait``).
A held slot lives on its own pooled session: if the session or the process dies, PostgreSQL frees it.
The single-bigint key space is separate from the two-int keys of ``db.locks`` and ``db.metrics.compute``.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator

import psycopg

from db.advisory import AdvisoryKey, try_lock, unlock
from db.connection import libpq_url

log = logging.getLogger(__name__)

DEFAULT_SLOTS = 3


class SlotWaitTimeout(TimeoutError):
    """All slots of the token stayed taken for ``max_wait`` seconds (a TimeoutError: retried later)."""


def slot_key(fingerprint: str, slot: int) -> int:
    """The advisory lock key (signed bigint) of one slot of one token."""
    digest = hashlib.sha256(f"shoptet-api-slot:{fingerprint}:{slot}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class AdvisorySlots:
    """A ``shoptet.ratelimit.SlotProvider`` backed by session advisory locks; safe across threads."""

    def __init__(
        self,
        url: str,
        slots: int = DEFAULT_SLOTS,
        *,
        max_wait: float = 600.0,
        first_gap: float = 0.02,
        max_gap: float = 1.0,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if slots < 1:
            raise ValueError("slots must be >= 1")
        self.url = url
        self.slots = slots
        self.max_wait = max_wait
        self.first_gap = first_gap
        self.max_gap = max_gap
        self.sleep = sleep
        self.clock = clock
        self._idle: list[psycopg.Connection] = []
        self._lock = threading.Lock()
        self._rng = random.Random()
        self.waits = 0  # observability (and tests): times a caller found every slot taken

    def __repr__(self) -> str:
        return f"AdvisorySlots(slots={self.slots})"

    @contextlib.contextmanager
    def slot(self, key: str) -> Iterator[None]:
        conn = self._take()
        try:
            held = self._acquire(conn, key)
        except BaseException:
            self._give_back(conn, broken=True)
            raise
        try:
            yield
        finally:
            try:
                unlock(conn, held)
            except psycopg.Error:
                self._give_back(conn, broken=True)  # closing the session frees the lock anyway
            else:
                self._give_back(conn)

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    # --- internals --------------------------------------------------------------------------------

    def _acquire(self, conn: psycopg.Connection, key: str) -> AdvisoryKey:
        keys = [AdvisoryKey.bigint(slot_key(key, n)) for n in range(self.slots)]
        start = self.clock()
        gap = self.first_gap
        waited = False
        while True:
            for k in self._rng.sample(keys, len(keys)):  # random order spreads contention
                if try_lock(conn, k):
                    return k
            if not waited:
                waited = True
                self.waits += 1
            if self.clock() - start >= self.max_wait:
                raise SlotWaitTimeout(
                    f"all {self.slots} Shoptet connection slots of the token stayed taken for "
                    f"{self.max_wait:.0f}s (other hub processes are using them); retry later"
                )
            self.sleep(self._rng.uniform(gap / 2, gap))
            gap = min(gap * 2, self.max_gap)

    def _take(self) -> psycopg.Connection:
        with self._lock:
            while self._idle:
                conn = self._idle.pop()
                if not conn.closed and not conn.broken:
                    return conn
        return psycopg.connect(
            libpq_url(self.url),
            autocommit=True,
            application_name="shoptet-hub api-slots",
            keepalives=1,
            keepalives_idle=30,
            keepalives_interval=10,
            keepalives_count=3,
        )

    def _give_back(self, conn: psycopg.Connection, *, broken: bool = False) -> None:
        if broken or conn.closed or conn.broken:
            with contextlib.suppress(Exception):
                conn.close()
            return
        with self._lock:
            if len(self._idle) < self.slots:
                self._idle.append(conn)
                return
        conn.close()


_shared: dict[tuple[str, int], AdvisorySlots] = {}
_shared_lock = threading.Lock()


def shared_slots(url: str, slots: int = DEFAULT_SLOTS, *, max_wait: float = 600.0) -> AdvisorySlots:
    """One provider (and session pool) per database URL in the process: tasks build a client each."""
    with _shared_lock:
        provider = _shared.get((url, slots))
        if provider is None:
            provider = _shared[(url, slots)] = AdvisorySlots(url, slots, max_wait=max_wait)
        provider.max_wait = max_wait
        return provider
