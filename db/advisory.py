"""PostgreSQL advisory lock keys and the calls that take them: every advisory lock of the hub goes through here.

The job locks (``db/locks.py``), the API slots (``db/api_slots.py``), migrations and the metrics refresh
all name their locks with an ``AdvisoryKey``, so the key spaces stay apart and ``pg_locks`` can be read
back with the same key.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import psycopg
from psycopg import sql


class LockError(RuntimeError):
    """A lock could not be checked, repaired or taken, or was lost; the job did not run or write."""


@dataclass(frozen=True)
class AdvisoryKey:
    """A PostgreSQL advisory lock key: one bigint, or two int4 (a namespace and a number within it).

    The two forms are separate key spaces (``objsubid`` 1 and 2 in ``pg_locks``): a bigint never
    collides with a pair. ``second`` is SQL, so the server can compute it (a hash of the current schema).
    """

    first: int  # the bigint key, or the namespace of a pair
    second: sql.Composable | None = None  # the second int of a pair (SQL); None: the one-bigint form

    @classmethod
    def bigint(cls, key: int) -> AdvisoryKey:
        """One bigint key: the same lock in every schema of the database."""
        return cls(key)

    @classmethod
    def pair(cls, namespace: int, second: int) -> AdvisoryKey:
        return cls(namespace, sql.Literal(second))

    @classmethod
    def per_schema(cls, namespace: int, name: str | None = None) -> AdvisoryKey:
        """(namespace, hashtext(current_schema() || ':' || name)), or of the schema alone without a name.

        hashtext is int4 and stable across PostgreSQL versions for a given input.
        """
        text = sql.SQL("current_schema()")
        if name is not None:
            text = sql.SQL("current_schema() || ':' || {}").format(sql.Literal(name))
        return cls(namespace, sql.SQL("hashtext({})").format(text))

    def args(self) -> sql.Composed:
        """The arguments of a ``pg_advisory_*`` function call."""
        if self.second is None:
            return sql.SQL("({})::int8").format(sql.Literal(self.first))
        return sql.SQL("({})::int4, ({})::int4").format(sql.Literal(self.first), self.second)

    def call(self, function: str) -> sql.Composed:
        return sql.SQL("SELECT {}({})").format(sql.Identifier(function), self.args())

    def in_pg_locks(self) -> sql.Composed:
        """The condition on ``pg_locks l`` of this key's lock, in the current database."""
        if self.second is None:  # PostgreSQL splits a bigint key into its high and low 32 bits
            high, low = (self.first >> 32) & 0xFFFFFFFF, self.first & 0xFFFFFFFF
            cond = sql.SQL("l.classid = {}::oid AND l.objid = {}::oid AND l.objsubid = 1").format(
                sql.Literal(high), sql.Literal(low)
            )
        else:
            cond = sql.SQL("l.classid = {}::oid AND l.objid = (({})::int4)::oid AND l.objsubid = 2").format(
                sql.Literal(self.first), self.second
            )
        this_database = sql.SQL("l.database = (SELECT oid FROM pg_database WHERE datname = current_database())")
        return sql.SQL("l.locktype = 'advisory' AND {} AND {}").format(cond, this_database)


def try_lock(conn: psycopg.Connection, key: AdvisoryKey) -> bool:
    """Take the session lock if it is free; never waits."""
    return bool(conn.execute(key.call("pg_try_advisory_lock")).fetchone()[0])


def unlock(conn: psycopg.Connection, key: AdvisoryKey) -> None:
    conn.execute(key.call("pg_advisory_unlock"))


def xact_lock(conn: psycopg.Connection, key: AdvisoryKey) -> None:
    """Wait for the lock and hold it to the end of the current transaction."""
    conn.execute(key.call("pg_advisory_xact_lock"))


def lock_holder_pid(conn: psycopg.Connection, key: AdvisoryKey) -> int | None:
    """The backend pid of the session holding the lock, if one does."""
    row = conn.execute(
        sql.SQL("SELECT l.pid FROM pg_locks l WHERE l.granted AND {}").format(key.in_pg_locks())
    ).fetchone()
    return row[0] if row else None


@contextmanager
def session_lock(
    conn: psycopg.Connection,
    key: AdvisoryKey,
    *,
    wait: bool = True,
    busy: Callable[[], Exception] = lambda: LockError("the advisory lock is held by another session"),
) -> Iterator[None]:
    """Hold a session advisory lock on ``conn`` while inside: it outlives the transactions in between.

    ``wait`` False: raise ``busy()`` at once when another session holds it. Unlocked on the way out
    (closing the connection would release it too, but only once the server notices: a caller right
    after this one could still find it taken); a closed or broken connection has lost it already.
    """
    if wait:
        conn.execute(key.call("pg_advisory_lock"))
    elif not try_lock(conn, key):
        raise busy()
    try:
        yield
    finally:
        if not (conn.closed or conn.broken):
            unlock(conn, key)
