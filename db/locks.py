"""The database half of a job lock: a PostgreSQL advisory lock, and the record of who holds it.

Prefect's global concurrency limits decide who runs; the advisory lock, held on a dedicated session for
as long as the job writes, makes sure that even a Prefect failure (a lease lost to a renewal hiccup,
an ephemeral server that forgot a slot) cannot let two writers in. A session lock dies with its
connection, so a crashed holder never leaves it behind.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

from db.connection import connect

# The first key of the two-int advisory lock form: the hub's own namespace.
LOCK_NAMESPACE = 0x5B07


@dataclass
class Holder:
    name: str
    flow_run_id: str | None
    host: str
    pid: int
    since: datetime
    backend_pid: int | None = None

    def describe(self) -> str:
        run = f"flow run {self.flow_run_id}, " if self.flow_run_id else ""
        return f"{run}pid {self.pid} on {self.host}, since {self.since:%Y-%m-%d %H:%M:%S %Z}"


def _key_sql() -> str:
    # hashtext is int4, stable across PostgreSQL versions for a given input.
    return f"{LOCK_NAMESPACE}, hashtext(current_schema() || ':' || %s)"


def try_advisory_lock(conn: psycopg.Connection, name: str) -> bool:
    return bool(conn.execute(f"SELECT pg_try_advisory_lock({_key_sql()})", (name,)).fetchone()[0])


def advisory_lock_backend(conn: psycopg.Connection, name: str) -> int | None:
    """The backend pid holding the named advisory lock, if any session holds it."""
    row = conn.execute(
        """SELECT l.pid FROM pg_locks l
            WHERE l.locktype = 'advisory' AND l.granted AND l.classid = %s::oid
              AND l.objid = (hashtext(current_schema() || ':' || %s))::oid AND l.objsubid = 2
              AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())""",
        (LOCK_NAMESPACE, name),
    ).fetchone()
    return row[0] if row else None


@contextmanager
def advisory_lock(
    url: str,
    schema: str,
    name: str,
    *,
    wait_seconds: float | None,
    flow_run_id: str | None = None,
    on_busy: Callable[[Holder | None], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[Holder]:
    """Hold the named advisory lock on a dedicated session and record the holder while inside.

    ``wait_seconds`` None waits forever, 0 tries once. ``on_busy`` is called (with the recorded
    holder) when the wait is over without the lock; it should raise.
    """
    conn = connect(url, schema, autocommit=True)
    try:
        deadline = None if wait_seconds is None else time.monotonic() + wait_seconds
        delay = 0.05
        while not try_advisory_lock(conn, name):
            if deadline is not None and time.monotonic() >= deadline:
                holder = read_holder(conn, name)
                if on_busy:
                    on_busy(holder)
                raise RuntimeError(f"lock {name} is held")
            sleep(delay)
            delay = min(delay * 2, 1.0)
        holder = Holder(name, flow_run_id, socket.gethostname(), os.getpid(), datetime.now().astimezone(),
                        conn.info.backend_pid)
        conn.execute(
            """INSERT INTO job_locks (name, flow_run_id, host, pid, backend_pid, since)
               VALUES (%s, %s, %s, %s, %s, now())
               ON CONFLICT (name) DO UPDATE SET flow_run_id = EXCLUDED.flow_run_id, host = EXCLUDED.host,
                 pid = EXCLUDED.pid, backend_pid = EXCLUDED.backend_pid, since = EXCLUDED.since""",
            (name, flow_run_id, holder.host, holder.pid, holder.backend_pid),
        )
        try:
            yield holder
        finally:
            conn.execute("DELETE FROM job_locks WHERE name = %s AND backend_pid = %s", (name, holder.backend_pid))
    finally:
        conn.close()  # ends the session: the advisory lock goes with it, whatever happened above


def read_holder(conn: psycopg.Connection, name: str) -> Holder | None:
    row = conn.execute(
        "SELECT name, flow_run_id, host, pid, since, backend_pid FROM job_locks WHERE name = %s", (name,)
    ).fetchone()
    return Holder(*row) if row else None


def read_holders(conn: psycopg.Connection) -> dict[str, Holder]:
    rows = conn.execute("SELECT name, flow_run_id, host, pid, since, backend_pid FROM job_locks").fetchall()
    return {r[0]: Holder(*r) for r in rows}


def holder_alive(conn: psycopg.Connection, holder: Holder) -> bool:
    """Alive while its session still holds the advisory lock, or its process still runs on this host."""
    backend = advisory_lock_backend(conn, holder.name)
    if backend is not None:
        return True
    if holder.host == socket.gethostname():
        try:
            os.kill(holder.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return False


def forget_holder(conn: psycopg.Connection, name: str) -> None:
    conn.execute("DELETE FROM job_locks WHERE name = %s", (name,))


def holder_dict(h: Holder | None) -> dict[str, Any] | None:
    if h is None:
        return None
    return {"flow_run_id": h.flow_run_id, "host": h.host, "pid": h.pid, "since": h.since.isoformat()}
