"""Which failures a Prefect task retries: transient ones only.

A 4xx from Shoptet, a failed Shoptet job, or a file refused by the loader will fail the same way
again, so retrying wastes the shop's rate-limit budget; those go straight to ``failed_snapshots``.
"""

from __future__ import annotations

from typing import Any

import psycopg

from db.loader import ApplyError
from shoptet.errors import ShoptetError

TASK_RETRIES = 3
_retry_base_seconds = 10.0


def retry_delays() -> list[float]:
    """Exponential backoff (jitter is added by ``retry_jitter_factor``)."""
    return [_retry_base_seconds * 2**r for r in range(TASK_RETRIES)]


def set_retry_base_seconds(seconds: float) -> None:
    """Tests use 0 so a retried task does not sleep for real."""
    global _retry_base_seconds
    _retry_base_seconds = seconds


def is_transient(exc: BaseException | None) -> bool:
    if exc is None:
        return False
    if isinstance(exc, ShoptetError):
        return bool(exc.transient)
    if isinstance(exc, ApplyError):
        return False
    if isinstance(exc, psycopg.OperationalError):
        return True  # connection lost, server restarting, lock timeout
    if isinstance(exc, (TimeoutError, ConnectionError)):
        return True
    return False


def transient_only(task: Any, task_run: Any, state: Any) -> bool:
    exc = getattr(state, "data", None)
    return is_transient(exc if isinstance(exc, BaseException) else None)
