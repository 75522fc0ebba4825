"""The Prefect half of a job lock: its global concurrency limit (checked, repaired) and one slot under a lease.

``flows/locks.py`` puts it together with the advisory lock; only it and ``hub locks`` call these.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from uuid import UUID

import httpx
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate, GlobalConcurrencyLimitUpdate
from prefect.concurrency._leases import maintain_concurrency_lease
from prefect.concurrency._sync import acquire_concurrency_slots_with_lease
from prefect.exceptions import ObjectNotFound

from db.locks import LockError
from flows.config import get_config
from flows.prefect_read import LimitStatus

log = logging.getLogger(__name__)


def limit_status(name: str) -> LimitStatus:
    with get_client(sync_client=True) as client:
        try:
            gcl = client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            return LimitStatus(name, False)
    return LimitStatus(name, True, gcl.active, gcl.limit, gcl.active_slots)


def ensure_limit(name: str) -> str:
    """Create the limit, or repair it to active with limit 1. Returns what was done."""
    status = limit_status(name)
    if status.healthy:
        return "ok"
    with get_client(sync_client=True) as client:
        if not status.exists:
            try:
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1, active=True))
            except httpx.HTTPStatusError as exc:
                if exc.response.status_code != 409:  # created meanwhile by another process: fine
                    raise
                return "ok"
            return "created"
        client.update_global_concurrency_limit(name, GlobalConcurrencyLimitUpdate(limit=1, active=True))
    return "repaired"


@contextmanager
def prefect_slot(name: str, wait: float | None) -> Iterator[str]:
    """One slot of ``name`` under a lease renewed in the background; yields the lease id.

    What ``prefect.concurrency.sync.concurrency(strict=True)`` does, plus the lease id (which it keeps
    to itself). A renewal failure does not stop the job (see the module docstring); a failed release
    at the end is only logged: the work is done, and the lease expires on its own.
    """
    lease = get_config().lock_lease_seconds
    acquired = acquire_concurrency_slots_with_lease(
        [name],
        1,
        timeout_seconds=wait if wait else None,
        max_retries=0 if wait == 0 else None,
        lease_duration=lease,
        strict=True,
    )
    if not acquired.limits:  # strict=True raises first; never run unlocked if that ever changes
        raise LockError(f"concurrency limit {name} does not exist; run `hub bootstrap`. The job did not run.")
    try:
        with maintain_concurrency_lease(acquired.lease_id, lease, raise_on_lease_renewal_failure=False):
            yield str(acquired.lease_id)
    finally:
        try:
            with get_client(sync_client=True) as client:
                client.release_concurrency_slots_with_lease(acquired.lease_id)
        except Exception as exc:  # noqa: BLE001 - logged; the lease expires on its own
            log.warning(
                "could not release the slot of %s (lease %s): %s; it comes back when the lease expires",
                name,
                acquired.lease_id,
                exc,
            )


def is_locked(exc: BaseException) -> bool:
    cause = exc.__cause__
    return isinstance(cause, httpx.HTTPStatusError) and cause.response.status_code == 423


def free_slot(name: str, lease_id: str | None, holder: str) -> tuple[str, int, int]:
    """Give back the slot of ``name`` that a dead holder (``holder``, described) left: revoke its lease
    if this server knows it, else reset the slots in use to 0. Returns how, and the slots before and after.

    The caller makes sure the holder is dead and holds the job's advisory lock (``flows.locks.release``).
    """
    before = limit_status(name).active_slots or 0
    with get_client(sync_client=True) as client:
        lease = UUID(lease_id) if lease_id else None
        if lease is not None and _lease_known(client, lease):
            # Decrements the slots the lease holds and deletes the lease.
            client.release_concurrency_slots_with_lease(lease)
            how = f"revoked lease {lease} of {holder}"
        elif before:
            client.update_global_concurrency_limit(name, GlobalConcurrencyLimitUpdate(active_slots=0))
            why = "unknown to this Prefect server" if lease is not None else "none recorded"
            how = f"reset the slot count (the holder's lease: {why})"
        else:
            how = "no slot was in use"
    return how, before, limit_status(name).active_slots or 0


def _lease_known(client: Any, lease: UUID) -> bool:
    """Whether this Prefect server holds ``lease``. Renewing is the one call that says so (410: unknown);
    the renewal is immaterial, the lease is revoked right after."""
    try:
        client.renew_concurrency_lease(lease, lease_duration=60)
    except httpx.HTTPStatusError as exc:
        if exc.response.status_code in (404, 410):
            return False
        raise
    return True
