"""DDL under a ``lock_timeout``, retried with backoff when the lock is not granted in time.

A DDL statement waiting for its lock queues every later writer of the table behind it: the short
timeout caps what writers can wait, and the retry (after a growing pause, during which they run)
gets the DDL through between two of their transactions.

The one place that sets ``lock_timeout`` (``lock_timeout``) and the one retry loop
(``retry_on_lock_timeout``) of every DDL path: partitions, archives, indexes, the migration, the split.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import psycopg
from psycopg.pq import TransactionStatus

log = logging.getLogger(__name__)

T = TypeVar("T")

ATTEMPTS = 8


@contextmanager
def lock_timeout(conn: psycopg.Connection, timeout: str) -> Iterator[None]:
    """``lock_timeout`` = ``timeout`` for the block, then back to the value it had (the role's own, say).

    Inside a transaction the setting is transaction-local (it also ends with the transaction, and a
    rollback undoes it); outside one (autocommit) it is the session's until the block ends. Never
    ``'0'`` afterwards: that would clobber a ``lock_timeout`` the role or the database sets.
    """
    local = conn.info.transaction_status != TransactionStatus.IDLE
    before = conn.execute("SELECT current_setting('lock_timeout')").fetchone()[0]
    conn.execute("SELECT set_config('lock_timeout', %s, %s)", (timeout, local))
    try:
        yield
    finally:
        # An aborted transaction's rollback restores it by itself; a closed connection has nothing to restore.
        if not conn.closed and conn.info.transaction_status in (TransactionStatus.IDLE, TransactionStatus.INTRANS):
            conn.execute("SELECT set_config('lock_timeout', %s, %s)", (before, local))


def pause_for(attempt: int, *, base: float = 0.2, cap: float = 10.0) -> float:
    return min(cap, base * 2**attempt)


def retry_on_lock_timeout(
    what: str,
    step: Callable[[], T],
    *,
    attempts: int | None = ATTEMPTS,
    give_up_after: float | None = None,
    sleep: Callable[[float], None] = time.sleep,
    cleanup: Callable[[], None] | None = None,
    base: float = 0.2,
    cap: float = 10.0,
) -> T:
    """Run ``step`` (one transaction or one autocommit statement) until its lock is granted in time.

    ``attempts``: how many tries (None: no limit, then ``give_up_after`` must bound the pauses);
    ``give_up_after``: stop once the pauses would add up to more than this many seconds.
    ``cleanup`` runs before every retry (after the pause), and once after a failure that is not a lock
    timeout: a ``CREATE INDEX CONCURRENTLY`` that failed leaves an INVALID index of its name behind,
    and the retried CREATE would fail on it (``DuplicateTable``) unless it is dropped first.
    """
    if attempts is None and give_up_after is None:
        raise ValueError("retry_on_lock_timeout needs attempts or give_up_after")
    waited, attempt = 0.0, 0
    while True:
        attempt += 1
        try:
            if attempt > 1 and cleanup is not None:
                cleanup()
            return step()
        except psycopg.errors.LockNotAvailable:
            pause = pause_for(attempt, base=base, cap=cap)
            out_of_tries = attempts is not None and attempt >= attempts
            if out_of_tries or (give_up_after is not None and waited + pause > give_up_after):
                raise
            log.info("%s: lock not granted in time (attempt %d); retrying in %.1fs", what, attempt, pause)
            sleep(pause)
            waited += pause
        except psycopg.Error:
            if cleanup is not None:
                try:
                    cleanup()
                except psycopg.Error as exc:  # a lost connection: the original error is the one to see
                    log.warning("%s: cleanup after the failure failed too: %s", what, exc)
            raise
