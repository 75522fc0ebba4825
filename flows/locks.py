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
released late, hand back a slot that the next holder took meanwhile. Leases live in the memory of the
server that made them: one made by another ephemeral server (every `hub` command without `hub serve`
runs its own) or before a restart is unknown, and release then resets the slot count instead.

The Prefect half (the limit, a slot under a lease) is ``flows/prefect_slots.py``. It uses private
Prefect names (``prefect.concurrency._sync``/``_leases``/``_asyncio``): the public
``concurrency()`` does not expose the lease id. pyproject.toml pins prefect to the tested minor version
and tests/integration/test_locks.py (test_private_prefect_names_still_exist) fails loudly if one
of them moves.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

from prefect.concurrency._asyncio import ConcurrencySlotAcquisitionError

from db import locks as dblocks
from db.connection import connection
from db.locks import LockError, LockLost
from flows import runtime
from flows.lock_view import GROUPS, PREFIX, instance, limit_name, lock_table, release_command
from flows.prefect_slots import ensure_limit, free_slot, is_locked, limit_status, prefect_slot

log = logging.getLogger(__name__)

LEASE_SECONDS = 600  # the default of HUB_LOCK_LEASE_SECONDS (flows.config)
EX_TEMPFAIL = 75  # sysexits.h: "try again later" — the CLI's exit code when a lock is held
# A job needing several locks retries after a busy later one, holding none meanwhile (seconds).
RETRY_FIRST_DELAY, RETRY_MAX_DELAY = 0.05, 2.0
# A timed acquire shorter than this is made an immediate one (a 423 or a slot): on a loaded server a
# short timed wait runs out on the round trip itself, and a free lock would be reported held.
TIMED_WAIT_FLOOR = 2.0


__all__ = [
    "LockError",
    "LockHeld",
    "LockLost",
    "ensure_limits",
    "instance",
    "job_lock",
    "limit_name",
    "limit_status",
    "lock_table",
    "release",
    "release_command",
]


class LockHeld(LockError):
    exit_code = EX_TEMPFAIL

    def __init__(
        self,
        name: str,
        holder: dblocks.Holder | None,
        waited: float | None,
        holder_alive: bool | None = None,
        timed_out: bool = False,
    ) -> None:
        # timed_out: the wait ran out without the server ever saying "busy" (it may only have been slow).
        self.name, self.holder, self.timed_out = name, holder, timed_out
        who = holder.describe() if holder else "holder unknown (none recorded)"
        after = f" after waiting {waited:g} s" if waited else ""
        # Unless the holder is known to run: a crashed one's slot never comes back by itself on an
        # ephemeral server or after a server restart, and only this command gives it back.
        hint = "" if holder_alive else f". If `hub locks` shows no live holder, `{release_command(name)}` frees it"
        super().__init__(f"lock {name} is held by {who}{after}; try again later or pass --wait SECONDS{hint}")


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
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[list[dblocks.Holder]]:
    """Hold the locks of ``groups`` (Prefect slot + advisory lock each) for the block.

    A flow writes ``with job_lock("orders", wait=lock_wait):``. ``wait``: 0 fails at once when a lock
    is held, N waits up to N seconds, None waits forever. Raises LockHeld (exit code 75 in the CLI) or
    LockError; never runs the block unlocked. Inside, ``db.locks.guard_write`` checks these locks in
    every writing transaction (``LockLost``). ``url``/``schema``: the hub's (``runtime.hub()``) unless
    given; the holder is recorded with the current flow run's id.

    Several groups are taken in ``GROUPS`` order (no cycles), and never held while waiting: only the
    first may be waited for; a later one that is busy makes it give back what it took and try again
    (backing off, ``sleep``), so ``orders`` stays free for the 15-minute fetch while partition
    maintenance waits for ``db-maintenance`` (review L6).
    """
    if url is None or schema is None:
        hub = runtime.hub()
        url, schema = url or hub.url, schema or hub.schema
    flow_run_id = flow_run_id or runtime.current_flow_run_id()
    inst = instance(url, schema)
    names = [limit_name(g, inst) for g in sorted(set(groups), key=GROUPS.index)]
    for name in names:
        _checked(name, repair)
    deadline = None if wait is None else time.monotonic() + wait
    delay = RETRY_FIRST_DELAY
    found_busy: LockHeld | None = None  # the last lock the server or PostgreSQL said was busy
    while True:
        try:
            held, holders = _take_all(names, url, schema, flow_run_id, wait, deadline)
        except LockHeld as busy:
            found_busy = found_busy if busy.timed_out else busy  # never None once a lock was seen busy
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                # Name a lock that was seen busy, not one whose last wait merely ran out.
                raise (found_busy or busy) from None
            log.info("lock %s is busy; holding none of %s while waiting", busy.name, ", ".join(names))
            sleep(delay if left is None else min(delay, left))
            delay = min(delay * 2, RETRY_MAX_DELAY)
            continue
        with held:
            yield holders
        return


def _take_all(
    names: list[str], url: str, schema: str, flow_run_id: str | None, wait: float | None, deadline: float | None
) -> tuple[ExitStack, list[dblocks.Holder]]:
    """Every lock of ``names`` or none: on LockHeld, leaving ``attempt`` gives back what it took."""
    with ExitStack() as attempt:
        holders = [_take(attempt, names[0], url, schema, flow_run_id, wait, deadline)]
        holders += [_take(attempt, n, url, schema, flow_run_id, 0, time.monotonic()) for n in names[1:]]
        return attempt.pop_all(), holders


def _take(
    stack: ExitStack,
    name: str,
    url: str,
    schema: str,
    flow_run_id: str | None,
    wait: float | None,
    deadline: float | None,
) -> dblocks.Holder:
    """One lock (Prefect slot, then advisory lock) onto ``stack``, waiting until the monotonic
    ``deadline`` (None: forever); raises LockHeld when it stays busy (``wait``: for the message)."""
    left = None if deadline is None else max(0.0, deadline - time.monotonic())
    slot_wait = 0.0 if left is not None and left < TIMED_WAIT_FLOOR else left
    try:
        lease_id = stack.enter_context(prefect_slot(name, slot_wait))
    except (TimeoutError, ConcurrencySlotAcquisitionError) as exc:
        # With max_retries=0 the server's 423 Locked arrives wrapped; anything else is a real error.
        if not isinstance(exc, TimeoutError) and not is_locked(exc):
            raise LockError(f"could not acquire {name}: {exc}") from exc
        holder, alive = _recorded_holder(url, schema, name)
        raise LockHeld(name, holder, wait, alive, timed_out=isinstance(exc, TimeoutError)) from None

    def busy(holder: dblocks.Holder | None) -> None:
        raise LockHeld(name, holder, wait, holder_alive=True)  # a session holds the advisory lock: it runs

    return stack.enter_context(
        dblocks.advisory_lock(
            url, schema, name, wait_seconds=left, flow_run_id=flow_run_id, lease_id=lease_id, on_busy=busy
        )
    )


def _recorded_holder(url: str, schema: str, name: str) -> tuple[dblocks.Holder | None, bool | None]:
    """The recorded holder of ``name`` and whether it is alive (None: none recorded)."""
    with connection(url, schema, autocommit=True) as conn:
        holder = dblocks.read_holder(conn, name)
        return holder, (dblocks.holder_alive(conn, holder) if holder else None)


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


@dataclass(frozen=True)
class Released:
    """What ``release`` did: the limit's name, how, and its slots in use before and after."""

    name: str
    how: str
    slots_before: int
    slots_after: int

    def describe(self) -> str:
        return f"{self.name}: {self.how}; slots in use {self.slots_before} → {self.slots_after}"


def release(url: str, schema: str, group_or_name: str) -> Released:
    """Free a slot left by a crashed holder; refuses while the recorded holder is alive or a session
    holds the advisory lock. Only this hub instance's limits are touched.

    Whatever server made the dead holder's lease, no slot stays in use: a lease this Prefect server
    knows is revoked (which gives its slot back, and the dead holder can never give back a slot the
    next holder took); a lease it does not know (made by another ephemeral server, or before a server
    restart: leases live in the server's memory) or none recorded cannot give anything back, so the
    limit's slots in use are reset to 0. Meanwhile this process holds the job's advisory lock itself:
    no job can start writing under this lock until the slot is freed (one that took the slot this very
    moment finds the lock busy; the advisory lock, not the slot count, is what keeps writers apart).
    """
    with connection(url, schema, autocommit=True) as conn:
        name = _own_name(group_or_name, dblocks.instance_id(conn))
        holder = dblocks.read_holder(conn, name)
        if holder is not None and dblocks.holder_alive(conn, holder):
            raise LockHeld(name, holder, None, holder_alive=True)
        with dblocks.lock_session(url, schema) as session:

            def running() -> LockError:
                backend = dblocks.advisory_lock_backend(conn, name)
                return LockError(
                    f"lock {name}: a session (backend pid {backend}) holds its advisory lock; its job is running"
                )

            with dblocks.session_lock(session, dblocks.job_key(name), wait=False, busy=running):
                how, before, after = free_slot(name, holder.lease_id if holder else None, _describe(holder))
                done = Released(name, how, before, after)
                dblocks.forget_holder(conn, name)
    log.info("lock %s", done.describe())
    return done


def _describe(holder: dblocks.Holder | None) -> str:
    return holder.describe() if holder else "no recorded holder"
