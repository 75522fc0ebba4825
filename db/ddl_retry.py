"""DDL under a ``lock_timeout``, retried with backoff when the lock is not granted in time.

A DDL statement waiting for its lock queues every later writer of the table behind it: the short
timeout caps what writers can wait, and the retry (after a growing pause, during which they run)
gets the DDL through between two of their transactions.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

import psycopg

log = logging.getLogger(__name__)

T = TypeVar("T")

ATTEMPTS = 8


def set_lock_timeout(conn: psycopg.Connection, timeout: str, *, local: bool) -> None:
    """``SET [LOCAL] lock_timeout`` (LOCAL: until the transaction ends; else for the session)."""
    conn.execute("SELECT set_config('lock_timeout', %s, %s)", (timeout, local))


def retry_on_lock_timeout(
    what: str,
    step: Callable[[], T],
    *,
    attempts: int = ATTEMPTS,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Run ``step`` (one transaction or one autocommit statement) until its lock is granted in time."""
    for attempt in range(1, attempts + 1):
        try:
            return step()
        except psycopg.errors.LockNotAvailable:
            if attempt == attempts:
                raise
            pause = min(10.0, 0.2 * 2**attempt)
            log.info("%s: lock not granted in time (attempt %d/%d); retrying in %.1fs", what, attempt, attempts, pause)
            sleep(pause)
    raise AssertionError("unreachable")
