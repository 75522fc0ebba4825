"""Job locks that never fail open: Prefect global concurrency limits plus a PostgreSQL advisory lock.

Locks guard what is written, so jobs writing the same tables exclude each other: one limit (limit 1)
per table group, named per hub instance (``hub-<instance id>-<group>``, see ``db.locks.instance_id``):
one Prefect server may serve several hubs (a demo and a production database), which must neither block
each other nor free each other's slots.

Prefect runs the body *unlocked* when a limit is missing, and also when it is inactive even with
``strict=True``; so before acquiring we check that the limit exists, is active and has limit 1, and
repair it (or fail with a clear message). While the job runs it also holds an advisory lock of the same
name (see ``db/locks.py``), which is what actually keeps two writers apart if Prefect loses
track of a slot, and which every writing transaction checks (``db.locks.guard_write``).

Lease: 10 minutes (``HUB_LOCK_LEASE_SECONDS``), renewed by Prefect at 75 %.
``raise_on_lease_renewal_failure=False``: a long import
must not be killed by one renewal hiccup (Prefect's own retries are 3 within seconds), and while the
advisory lock is held a second writer cannot start even if the lease lapsed. A crashed holder's slot
comes back after the lease on a real server; on an ephemeral server or after a server restart it never
does, which is what ``hub locks release`` is for. The holder's lease id is recorded with it, so release
revokes that very lease: a dead holder's lease can then neither be renewed nor, when it expires or is
released late, hand back a slot that the next holder took meanwhile.

Private Prefect names (``prefect.concurrency._sync``/``_leases``/``_asyncio``): the public
``concurrency()`` does not expose the lease id. pyproject.toml pins prefect to the tested minor version
and tests/integration/test_locks.py (test_private_prefect_names_still_exist) fails loudly if one
of them moves.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import httpx
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate, GlobalConcurrencyLimitUpdate
from prefect.concurrency._asyncio import ConcurrencySlotAcquisitionError
from prefect.concurrency._leases import maintain_concurrency_lease
from prefect.concurrency._sync import acquire_concurrency_slots_with_lease
from prefect.exceptions import ObjectNotFound

from db import locks as dblocks
from db.connection import connection
from db.locks import LockError, LockLost
from flows import runtime
from flows.config import get_config

log = logging.getLogger(__name__)

# The fixed acquisition order when a job needs several (the retry flow takes its own lock, then an
# entity's): every job takes locks in this order, so no two jobs can wait on each other in a cycle.
GROUPS = ("retry-failed-snapshots", "orders", "customers", "products", "customer-metrics", "db-maintenance")
PREFIX = "hub-"
LEASE_SECONDS = 600  # the default of HUB_LOCK_LEASE_SECONDS (flows.config)
EX_TEMPFAIL = 75  # sysexits.h: "try again later" — the CLI's exit code when a lock is held


__all__ = [
    "LockError",
    "LockHeld",
    "LockLost",
    "ensure_limits",
    "instance",
    "job_lock",
    "limit_name",
    "lock_table",
    "release",
]


def limit_name(group: str, instance: str) -> str:
    """The Prefect limit of ``group`` for the hub instance ``instance`` (``db.locks.instance_id``)."""
    if group not in GROUPS:
        raise ValueError(f"unknown lock group {group!r}; known: {', '.join(GROUPS)}")
    return f"{PREFIX}{instance}-{group}"


def instance(url: str, schema: str) -> str:
    """This hub instance's id (database + schema), as its limit names carry it."""
    with connection(url, schema, autocommit=True) as conn:
        return dblocks.instance_id(conn)


class LockHeld(LockError):
    exit_code = EX_TEMPFAIL

    def __init__(self, name: str, holder: dblocks.Holder | None, waited: float | None) -> None:
        self.name, self.holder = name, holder
        who = holder.describe() if holder else "holder unknown (not recorded: it may have crashed — see `hub locks`)"
        after = f" after waiting {waited:g} s" if waited else ""
        super().__init__(f"lock {name} is held by {who}{after}; try again later or pass --wait SECONDS")


@dataclass
class LimitStatus:
    name: str
    exists: bool
    active: bool | None = None
    limit: int | None = None
    active_slots: int | None = None

    @property
    def healthy(self) -> bool:
        return self.exists and bool(self.active) and self.limit == 1


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


def ensure_limits(url: str, schema: str) -> dict[str, str]:
    """`hub bootstrap`: every lock's limit of this hub instance exists, is active and has limit 1 (idempotent)."""
    inst = instance(url, schema)
    return {limit_name(g, inst): ensure_limit(limit_name(g, inst)) for g in GROUPS}


def _checked(name: str, repair: bool) -> None:
    status = limit_status(name)
    if status.healthy:
        return
    problem = "missing" if not status.exists else f"inactive or limit {status.limit}"
    if not repair:
        raise LockError(
            f"concurrency limit {name} is {problem}; run `hub bootstrap` to repair it. "
            "The job did not run (it never runs unlocked)."
        )
    if status.exists:  # someone changed it: say so
        log.warning("concurrency limit %s was %s; repairing it", name, problem)
    else:  # a new Prefect server (every first run in ephemeral mode): nothing is wrong
        log.info("concurrency limit %s does not exist yet; creating it", name)
    ensure_limit(name)
    if not limit_status(name).healthy:
        raise LockError(f"concurrency limit {name} is {problem} and could not be repaired; the job did not run")


@contextmanager
def job_lock(
    *groups: str,
    wait: float | None = 0,
    url: str | None = None,
    schema: str | None = None,
    repair: bool = True,
    flow_run_id: str | None = None,
) -> Iterator[list[dblocks.Holder]]:
    """Hold the locks of ``groups`` (Prefect slot + advisory lock each) for the block.

    A flow writes ``with job_lock("orders", wait=lock_wait):``. ``wait``: 0 fails at once when a lock
    is held, N waits up to N seconds, None waits forever. Raises LockHeld (exit code 75 in the CLI) or
    LockError; never runs the block unlocked. Inside, ``db.locks.guard_write`` checks these locks in
    every writing transaction (``LockLost``). ``url``/``schema``: the hub's (``runtime.hub()``) unless
    given; the holder is recorded with the current flow run's id.
    """
    if url is None or schema is None:
        hub = runtime.hub()
        url, schema = url or hub.url, schema or hub.schema
    flow_run_id = flow_run_id or runtime.current_flow_run_id()
    inst = instance(url, schema)
    names = [limit_name(g, inst) for g in sorted(set(groups), key=GROUPS.index)]
    holders: list[dblocks.Holder] = []
    deadline = None if wait is None else time.monotonic() + wait
    with ExitStack() as stack:
        for name in names:
            _checked(name, repair)
            try:
                lease_id = stack.enter_context(_prefect_slot(name, wait))
            except (TimeoutError, ConcurrencySlotAcquisitionError) as exc:
                # With max_retries=0 the server's 423 Locked arrives wrapped; anything else is a real error.
                if not isinstance(exc, TimeoutError) and not _is_locked(exc):
                    raise LockError(f"could not acquire {name}: {exc}") from exc
                raise LockHeld(name, _recorded_holder(url, schema, name), wait) from None

            def busy(holder: dblocks.Holder | None, _name: str = name) -> None:
                raise LockHeld(_name, holder, wait)

            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            holders.append(
                stack.enter_context(
                    dblocks.advisory_lock(
                        url, schema, name, wait_seconds=left, flow_run_id=flow_run_id, lease_id=lease_id, on_busy=busy
                    )
                )
            )
        yield holders


@contextmanager
def _prefect_slot(name: str, wait: float | None) -> Iterator[str]:
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


def _is_locked(exc: BaseException) -> bool:
    cause = exc.__cause__
    return isinstance(cause, httpx.HTTPStatusError) and cause.response.status_code == 423


def _recorded_holder(url: str, schema: str, name: str) -> dblocks.Holder | None:
    with connection(url, schema, autocommit=True) as conn:
        return dblocks.read_holder(conn, name)


def lock_table(url: str, schema: str) -> list[dict[str, Any]]:
    """`hub locks`: each lock of this hub instance with its limit's state and the recorded holder."""
    with connection(url, schema, autocommit=True) as conn:
        inst = dblocks.instance_id(conn)
        holders = dblocks.read_holders(conn)
        rows = []
        for g in GROUPS:
            name = limit_name(g, inst)
            st = limit_status(name)
            h = holders.get(name)
            rows.append(
                {
                    "lock": name,
                    "exists": st.exists,
                    "active": st.active,
                    "limit": st.limit,
                    "slots_in_use": st.active_slots,
                    "holder": h.describe() if h else None,
                    "holder_alive": dblocks.holder_alive(conn, h) if h else None,
                }
            )
    return rows


def _own_name(group_or_name: str, inst: str) -> str:
    if not group_or_name.startswith(PREFIX):
        return limit_name(group_or_name, inst)
    mine = [limit_name(g, inst) for g in GROUPS]
    if group_or_name not in mine:
        raise ValueError(
            f"{group_or_name} is not a lock of this hub instance ({inst}): its locks are "
            f"{', '.join(mine)}. Point HUB_DATABASE_URL at the hub that owns it."
        )
    return group_or_name


def release(url: str, schema: str, group_or_name: str) -> str:
    """Free a slot left by a crashed holder; refuses while the recorded holder is alive.

    The recorded holder's lease is revoked (which also gives its slot back), so the dead holder can
    never give back a slot the next holder took. Without a recorded lease (the holder died before
    recording one, or an older holder row) the limit's slot count is reset to 0, as before leases were
    recorded. Only this hub instance's limits are touched.
    """
    with connection(url, schema, autocommit=True) as conn:
        name = _own_name(group_or_name, dblocks.instance_id(conn))
        holder = dblocks.read_holder(conn, name)
        if holder is not None and dblocks.holder_alive(conn, holder):
            raise LockHeld(name, holder, None)
        backend = dblocks.advisory_lock_backend(conn, name)
        if backend is not None:
            raise LockError(
                f"lock {name}: a session (backend pid {backend}) still holds its advisory lock; its job is running"
            )
        with get_client(sync_client=True) as client:
            if holder is not None and holder.lease_id:
                # Decrements the slots the lease holds and deletes the lease; a no-op once it is gone.
                client.release_concurrency_slots_with_lease(UUID(holder.lease_id))
                log.info("lock %s: revoked lease %s of %s", name, holder.lease_id, holder.describe())
            else:
                client.update_global_concurrency_limit(name, GlobalConcurrencyLimitUpdate(active_slots=0))
                log.info("lock %s: no recorded lease; slots in use reset to 0", name)
        dblocks.forget_holder(conn, name)
    return name
