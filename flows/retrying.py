"""Task retries: transient failures only, with exponential backoff (10, 20, 40 s, ±50 % jitter).

A 4xx from Shoptet, a failed Shoptet job, or a file refused by the loader will fail the same way
again, so retrying wastes the shop's rate-limit budget; those go straight to ``failed_snapshots``.
Spread ``RETRIES`` into a task's decorator: ``@task(name="…", **RETRIES)``. Tests make the waits 0
with the ``no_retry_waits`` fixture (tests/conftest.py).
"""

from __future__ import annotations

from typing import Any

import psycopg
from prefect.tasks import exponential_backoff

from db.loader import ApplyError
from shoptet.errors import ShoptetError

TASK_RETRIES = 3


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


RETRIES: dict[str, Any] = dict(
    retries=TASK_RETRIES,
    retry_delay_seconds=exponential_backoff(backoff_factor=10),
    retry_jitter_factor=0.5,
    retry_condition_fn=transient_only,
)
