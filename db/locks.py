"""The database half of a job lock: a PostgreSQL advisory lock, and the record of who holds it.

Prefect's global concurrency limits decide who runs; the advisory lock, held on a dedicated session for
as long as the job writes, makes sure that even a Prefect failure (a lease lost to a renewal hiccup,
an ephemeral server that forgot a slot) cannot let two writers in. A session lock dies with its
connection, so a crashed holder never leaves it behind.

The lock session can also die while its job goes on (``idle_session_timeout``, a pooler, a NAT
dropping an idle TCP connection): the session gets TCP keepalives and ``idle_session_timeout = 0``,
and every writing transaction calls ``guard_write(conn)``, which refuses to let it commit once the
session is gone (``LockLost``).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, fields
from datetime import UTC, datetime

import psutil
import psycopg
from psycopg import sql
from psycopg.pq import TransactionStatus

from db.advisory import AdvisoryKey, LockError, lock_holder_pid, session_lock, try_lock, unlock, xact_lock
from db.connection import connect

log = logging.getLogger(__name__)

# The key and call helpers live in db/advisory.py; re-exported here for the callers of the job locks.
__all__ = [
    "KEEPALIVES",
    "LOCK_NAMESPACE",
    "WRITE_NAMESPACE",
    "ActiveLock",
    "AdvisoryKey",
    "Holder",
    "LockError",
    "LockLost",
    "active_guards",
    "advisory_lock",
    "advisory_lock_backend",
    "forget_holder",
    "guard_write",
    "holder_alive",
    "instance_id",
    "job_key",
    "lock_holder_pid",
    "lock_session",
    "read_holder",
    "read_holders",
    "session_lock",
    "try_lock",
    "unlock",
    "xact_lock",
]

# The first key of the two-int advisory lock form: the hub's own namespace.
LOCK_NAMESPACE = 0x5B07
# Writing transactions take a second lock of the same name in this namespace (see ``guard_write``).
WRITE_NAMESPACE = 0x5B08

# libpq TCP keepalives of the lock session: a dead peer (NAT drop, failed-over server) is noticed in
# about idle + interval * count = 60 + 10 * 6 s, not hours. No effect over Unix sockets, where they
# are not needed.
KEEPALIVES = {"keepalives": 1, "keepalives_idle": 60, "keepalives_interval": 10, "keepalives_count": 6}
# A process start time read back from the database may differ from psutil's by rounding.
START_TIME_TOLERANCE = 1.0


class LockLost(LockError):
    """The job's lock session is gone: this transaction must not commit (it is rolled back)."""

    def __init__(self, name: str, backend_pid: int) -> None:
        self.name, self.backend_pid = name, backend_pid
        super().__init__(
            f"lock {name} was lost: its session (backend pid {backend_pid}) no longer holds the advisory lock "
            "(terminated, timed out or dropped by the network); this transaction was rolled back and wrote "
            "nothing. Run the job again."
        )


@dataclass
class Holder:
    name: str
    flow_run_id: str | None
    host: str
    pid: int
    since: datetime
    backend_pid: int | None = None
    lease_id: str | None = None
    pid_started_at: datetime | None = None

    def describe(self) -> str:
        run = f"flow run {self.flow_run_id}, " if self.flow_run_id else ""
        return f"{run}pid {self.pid} on {self.host}, since {self.since:%Y-%m-%d %H:%M:%S %Z}"


_HOLDER_COLUMNS = sql.SQL(", ").join(sql.Identifier(f.name) for f in fields(Holder))  # in Holder's order


@dataclass(frozen=True)
class ActiveLock:
    """A job lock held in this context: what ``guard_write`` checks (see ``active_guards``)."""

    name: str
    key: int  # hashtext(schema || ':' || name), the second int of both advisory keys
    backend_pid: int  # the lock session
    backend_start: datetime  # with backend_pid: a reused backend pid is not the lock session
    dbname: str  # the lock's database: guard_write checks connections to a database of this name

    def matches(self, conn: psycopg.Connection) -> bool:
        # By name only, not host: "localhost" and "127.0.0.1" are one server. A same-named database on
        # another server fails the check in pg_locks (LockLost): closed, never open.
        return conn.info.dbname == self.dbname


_ACTIVE: ContextVar[tuple[ActiveLock, ...]] = ContextVar("hub_job_locks", default=())


def active_guards() -> tuple[ActiveLock, ...]:
    """The job locks held in this context, to hand to code running where contextvars do not reach.

    Prefect task runs called from a flow that holds ``job_lock`` see them (contextvars are copied
    into task runs, also ``.submit()``ed ones); a bare ``threading.Thread`` starts with an empty
    context, so pass ``guard_write(conn, guards=active_guards())`` taken in the flow's thread.
    """
    return _ACTIVE.get()


def guard_write(conn: psycopg.Connection, guards: Sequence[ActiveLock] | None = None) -> None:
    """Call in every writing transaction of a locked job, before it commits (best: as it begins).

    A no-op when no job lock is held in this context (``guards`` None) or for a database other than
    the lock's (by name). Otherwise, for each held lock:

    1. ``pg_advisory_xact_lock(WRITE_NAMESPACE, key)``: a lock of the same name in a second
       namespace, held to the end of this transaction;
    2. a check in ``pg_locks`` that the job's lock session (its backend pid and start time) still
       holds the session advisory lock; if not, raises ``LockLost`` and the caller's transaction
       rolls back.

    Why not ``pg_advisory_xact_lock`` on the session lock's own key: the session lock is held by
    another backend of the same job, so the writer would wait for its own job forever. The second
    key gives the same guarantee: a transaction commits only if its session lock was held at a moment
    when this transaction already held the write lock. Another job can take the session lock only
    after that session died, and its writes must take the write lock too, so they wait until this
    transaction has ended: the two jobs' transactions never interleave, exactly as if the session lock
    had been held to this commit. (Under REPEATABLE READ the snapshot is taken as the first statement
    starts, before any wait here: a writer that waited for a lost holder's transaction reads from
    before that commit, and an update of a row it changed fails with a serialization error. Only
    after a lock was lost can that wait happen at all.)

    Contextvars reach Prefect task runs (called or ``.submit()``ed) of a flow holding the lock; for a
    plain thread, pass ``guards=active_guards()`` taken in the locked thread.
    """
    held = active_guards() if guards is None else guards
    mine = sorted((g for g in held if g.matches(conn)), key=lambda g: g.key)  # one order: no deadlocks
    if not mine:
        return
    if conn.autocommit and conn.info.transaction_status == TransactionStatus.IDLE:
        raise RuntimeError(
            "guard_write must run inside the writing transaction (conn.transaction()), "
            "not on an autocommit connection outside one"
        )
    for g in mine:
        xact_lock(conn, AdvisoryKey.pair(WRITE_NAMESPACE, g.key))
    for g in mine:
        alive = conn.execute(
            sql.SQL(
                """SELECT EXISTS (
                     SELECT 1 FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
                      WHERE l.granted AND l.pid = %s AND {}
                        AND (a.backend_start = %s OR a.backend_start IS NULL))"""
            ).format(AdvisoryKey.pair(LOCK_NAMESPACE, g.key).in_pg_locks()),
            (g.backend_pid, g.backend_start),
        ).fetchone()[0]
        if not alive:
            raise LockLost(g.name, g.backend_pid)


def job_key(name: str) -> AdvisoryKey:
    """The session advisory lock of the named job lock, in the hub's namespace and this schema."""
    return AdvisoryKey.per_schema(LOCK_NAMESPACE, name)


def advisory_lock_backend(conn: psycopg.Connection, name: str) -> int | None:
    """The backend pid holding the named job's advisory lock, if any session holds it."""
    return lock_holder_pid(conn, job_key(name))


def lock_session(url: str, schema: str) -> psycopg.Connection:
    """The dedicated session an advisory lock is held on: keepalives, never closed for being idle."""
    conn = connect(url, schema, autocommit=True, **KEEPALIVES)
    try:
        # The job may not touch this session for hours; a server-wide idle_session_timeout must not end it.
        conn.execute("SET idle_session_timeout = 0")
    except BaseException:
        conn.close()
        raise
    return conn


def _process_started_at(pid: int) -> datetime | None:
    try:
        return datetime.fromtimestamp(psutil.Process(pid).create_time(), UTC)
    except (psutil.Error, OSError):
        return None


@contextmanager
def advisory_lock(
    url: str,
    schema: str,
    name: str,
    *,
    wait_seconds: float | None,
    flow_run_id: str | None = None,
    lease_id: str | None = None,
    on_busy: Callable[[Holder | None], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[Holder]:
    """Hold the named advisory lock on a dedicated session and record the holder while inside.

    ``wait_seconds`` None waits forever, 0 tries once. ``on_busy`` is called (with the recorded
    holder) when the wait is over without the lock; it should raise. ``lease_id``: the Prefect lease
    of the job's slot, recorded so that ``hub locks release`` can revoke it. While inside, the lock
    is published to ``guard_write`` (``active_guards``).
    """
    conn = lock_session(url, schema)
    try:
        deadline = None if wait_seconds is None else time.monotonic() + wait_seconds
        delay = 0.05
        key = job_key(name)
        while not try_lock(conn, key):
            if deadline is not None and time.monotonic() >= deadline:
                holder = read_holder(conn, name)
                if on_busy:
                    on_busy(holder)
                raise RuntimeError(f"lock {name} is held")
            sleep(delay)
            delay = min(delay * 2, 1.0)
        pid = os.getpid()
        holder = Holder(
            name,
            flow_run_id,
            socket.gethostname(),
            pid,
            datetime.now().astimezone(),
            conn.info.backend_pid,
            lease_id,
            _process_started_at(pid),
        )
        key_id, backend_start = conn.execute(
            sql.SQL("SELECT {}, backend_start FROM pg_stat_activity WHERE pid = pg_backend_pid()").format(key.second)
        ).fetchone()
        conn.execute(
            """INSERT INTO job_locks (name, flow_run_id, host, pid, backend_pid, since, lease_id, pid_started_at)
               VALUES (%s, %s, %s, %s, %s, now(), %s, %s)
               ON CONFLICT (name) DO UPDATE SET flow_run_id = EXCLUDED.flow_run_id, host = EXCLUDED.host,
                 pid = EXCLUDED.pid, backend_pid = EXCLUDED.backend_pid, since = EXCLUDED.since,
                 lease_id = EXCLUDED.lease_id, pid_started_at = EXCLUDED.pid_started_at""",
            (name, flow_run_id, holder.host, holder.pid, holder.backend_pid, lease_id, holder.pid_started_at),
        )
        active = ActiveLock(name, key_id, holder.backend_pid, backend_start, conn.info.dbname)
        token = _ACTIVE.set((*_ACTIVE.get(), active))
        try:
            yield holder
        finally:
            _ACTIVE.reset(token)
            try:
                conn.execute("DELETE FROM job_locks WHERE name = %s AND backend_pid = %s", (name, holder.backend_pid))
            except psycopg.Error as exc:
                # The session died while the job ran. Every writing transaction checked the lock
                # (guard_write), so what committed was written under it: the job's outcome stands.
                # The row stays behind; its holder shows as dead and the next holder replaces it.
                log.warning(
                    "lock %s: its session was gone at release (%s); the holder row stays behind "
                    "until the next holder replaces it",
                    name,
                    type(exc).__name__,
                )
    finally:
        conn.close()  # ends the session: the advisory lock goes with it, whatever happened above


def read_holder(conn: psycopg.Connection, name: str) -> Holder | None:
    row = conn.execute(sql.SQL("SELECT {} FROM job_locks WHERE name = %s").format(_HOLDER_COLUMNS), (name,)).fetchone()
    return Holder(*row) if row else None


def read_holders(conn: psycopg.Connection) -> dict[str, Holder]:
    rows = conn.execute(sql.SQL("SELECT {} FROM job_locks").format(_HOLDER_COLUMNS)).fetchall()
    return {r[0]: Holder(*r) for r in rows}


def holder_alive(conn: psycopg.Connection, holder: Holder) -> bool:
    """Alive while its session still holds the advisory lock, or its process still runs on this host.

    "Its process" is the pid *and* its start time: after a crash the pid may belong to another process.
    """
    backend = advisory_lock_backend(conn, holder.name)
    if backend is not None:
        return True
    if holder.host != socket.gethostname():
        return False
    try:
        proc = psutil.Process(holder.pid)
        started = proc.create_time()
    except psutil.NoSuchProcess:
        return False
    except (psutil.AccessDenied, OSError):
        return True  # cannot tell: assume alive (release refuses rather than free a live job's slot)
    if holder.pid_started_at is None:  # recorded before start times were: the pid is all we have
        return True
    return abs(started - holder.pid_started_at.timestamp()) <= START_TIME_TOLERANCE


def forget_holder(conn: psycopg.Connection, name: str) -> None:
    conn.execute("DELETE FROM job_locks WHERE name = %s", (name,))


def instance_id(conn: psycopg.Connection) -> str:
    """This hub instance's short id: names its Prefect limits (one Prefect server, several hubs).

    Derived from the random id in ``hub_instance`` *and* the database and schema names, so a copy of
    the database (a restored backup, ``CREATE DATABASE … TEMPLATE``) under another name is another
    instance, while the id stays stable for the life of the database.
    """
    row = conn.execute(
        """SELECT substr(md5(h.id || ':' || current_database() || ':' || current_schema()), 1, 8)
             FROM hub_instance h"""
    ).fetchone()
    if row is None:  # the row was deleted by hand: make a new one (a new id: new limits get created)
        conn.execute("INSERT INTO hub_instance DEFAULT VALUES ON CONFLICT DO NOTHING")
        return instance_id(conn)
    return row[0]
