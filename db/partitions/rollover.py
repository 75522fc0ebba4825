"""Quarterly partitions of ``order_items`` (UTC quarter boundaries, named ``order_items_YYYY_qN``).

A partition is created as ``CREATE TABLE … (LIKE parent)`` + ``ATTACH PARTITION``: ATTACH takes only
SHARE UPDATE EXCLUSIVE on the parent, where ``CREATE TABLE … PARTITION OF`` would take ACCESS
EXCLUSIVE. Each step runs under a short ``lock_timeout`` and is retried, so a long query or a backup
holding the parent delays us instead of queueing every other query behind our DDL.
"""

from __future__ import annotations

import calendar
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import psycopg
from psycopg import sql

from db.dates import DateWindow
from db.ddl_retry import lock_timeout as ddl_lock_timeout
from db.ddl_retry import retry_on_lock_timeout

log = logging.getLogger(__name__)

PARENT = "order_items"
LEGACY = "order_items_legacy"  # the pre-partitioning table, attached whole by ``hub migrate-partitions``


@dataclass(frozen=True, order=True)
class Quarter:
    year: int
    q: int

    @classmethod
    def of(cls, ts: datetime) -> Quarter:
        ts = ts.astimezone(UTC)
        return cls(ts.year, (ts.month - 1) // 3 + 1)

    @property
    def start(self) -> datetime:
        return datetime(self.year, 3 * (self.q - 1) + 1, 1, tzinfo=UTC)

    @property
    def end(self) -> datetime:
        return self.next().start

    @property
    def last_moment(self) -> datetime:
        """The quarter's last microsecond (defined for 9999 Q4 too, unlike ``end``)."""
        month = 3 * self.q
        return datetime(self.year, month, calendar.monthrange(self.year, month)[1], 23, 59, 59, 999999, tzinfo=UTC)

    def next(self) -> Quarter:
        return Quarter(self.year + 1, 1) if self.q == 4 else Quarter(self.year, self.q + 1)

    @property
    def key(self) -> tuple[int, int]:
        """(year, quarter): what a chunk carries per line (a plain tuple pickles fastest)."""
        return self.year, self.q

    @property
    def name(self) -> str:
        return f"{PARENT}_{self.year:04d}_q{self.q}"  # 4 digits: models/autogenerate.py matches this


def quarters_until(first: Quarter, end: datetime) -> list[Quarter]:
    """``first`` and every later quarter that starts before ``end``."""
    out, q = [], first
    while q.start < end:
        out.append(q)
        q = q.next()
    return out


def existing_partitions(conn: psycopg.Connection, parent: str = PARENT) -> set[str]:
    rows = conn.execute(
        """SELECT c.relname FROM pg_inherits i
           JOIN pg_class c ON c.oid = i.inhrelid
           JOIN pg_class p ON p.oid = i.inhparent
           WHERE p.oid = to_regclass(%s)""",
        (parent,),
    ).fetchall()
    return {r[0] for r in rows}


def legacy_bound(conn: psycopg.Connection, parent: str = PARENT) -> datetime | None:
    """The upper bound of the attached legacy partition (it holds every row below it), or None."""
    row = conn.execute(
        r"""SELECT (regexp_match(pg_get_expr(c.relpartbound, c.oid), 'TO \(''([^'']*)''\)'))[1]::timestamptz
              FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
             WHERE i.inhparent = to_regclass(%s) AND c.relname = %s""",
        (parent, LEGACY),
    ).fetchone()
    return row[0] if row else None


def ensure_partitions(
    conn: psycopg.Connection,
    quarters: list[Quarter],
    *,
    lock_timeout: str = "5s",
    attempts: int = 5,
    sleep=time.sleep,  # noqa: ANN001
    window: DateWindow | None = None,
    parent: str = PARENT,
    with_check: bool = False,
) -> list[str]:
    """Create every missing quarter partition; return the names created. ``conn`` must be autocommit.

    A quarter outside the accepted dates (``window``, by default ``DateWindow.default()``) is refused:
    the loader rejects such lines, so a request for one is a bug, not data. So is an archived quarter
    (``partition_archives``, the retention horizon): the loader drops its items before asking, and only
    ``hub partitions restore-archive`` lifts the horizon. A quarter below the legacy partition's bound
    (``hub migrate-partitions`` before its ``--split``) is already covered: skipped, not created.

    ``parent``/``with_check``: the split of the legacy partition builds its quarters under a shadow
    parent, each with a CHECK of its range, so that they can later be attached to ``order_items``
    without a scan (``db/partitions/split.py``).
    """
    if not conn.autocommit:
        raise ValueError("ensure_partitions needs an autocommit connection (one short transaction per step)")
    window = window or DateWindow.default()
    outside = [q.name for q in quarters if not (window.contains(q.start) or window.contains(q.last_moment))]
    if outside:
        raise ValueError(f"refusing to create partitions outside the accepted dates: {', '.join(outside)}")
    existing = existing_partitions(conn, parent)
    covered = legacy_bound(conn, parent)
    missing = [q for q in quarters if q.name not in existing and not (covered and q.end <= covered)]
    archived = archived_quarters(conn) if missing else frozenset()
    beyond = [q.name for q in missing if q.key in archived]
    if beyond:
        raise ValueError(f"refusing to re-create archived partitions (beyond retention): {', '.join(beyond)}")
    created = []
    for quarter in missing:
        retry_on_lock_timeout(
            f"creating {quarter.name}",
            lambda q=quarter: _create_partition(conn, q, lock_timeout, parent, with_check),
            attempts=attempts,
            sleep=sleep,
        )
        created.append(quarter.name)
    return created


def _create_partition(
    conn: psycopg.Connection, quarter: Quarter, lock_timeout: str, parent_name: str = PARENT, with_check: bool = False
) -> None:
    with conn.transaction(), ddl_lock_timeout(conn, lock_timeout):
        # Another writer may have attached it since we looked: re-check inside the transaction.
        if quarter.name in existing_partitions(conn, parent_name):
            return
        create_unattached(conn, quarter, parent_name, with_check=with_check)
        attach(conn, quarter, parent_name)
    log.info("created partition %s of %s", quarter.name, parent_name)


def create_unattached(
    conn: psycopg.Connection, quarter: Quarter, parent: str = PARENT, *, with_check: bool = False
) -> None:
    """The quarter's table shaped like ``parent``, not attached (if missing). ``with_check``: with a CHECK of
    its range, which proves the range to a later ATTACH (no scan under its lock)."""
    ident = sql.Identifier(quarter.name)
    conn.execute(
        sql.SQL(
            "CREATE TABLE IF NOT EXISTS {} (LIKE {} INCLUDING DEFAULTS INCLUDING CONSTRAINTS "
            "INCLUDING STORAGE INCLUDING COMMENTS)"
        ).format(ident, sql.Identifier(parent))
    )
    have = conn.execute(
        "SELECT 1 FROM pg_constraint WHERE conrelid = to_regclass(%s) AND conname = %s",
        (quarter.name, range_check_name(quarter)),
    ).fetchone()
    if with_check and not have:
        conn.execute(
            sql.SQL("ALTER TABLE {t} ADD CONSTRAINT {c} CHECK ({k} IS NOT NULL AND {k} >= {a} AND {k} < {b})").format(
                t=ident,
                c=sql.Identifier(range_check_name(quarter)),
                k=sql.Identifier("created_at"),
                a=sql.Literal(quarter.start),
                b=sql.Literal(quarter.end),
            )
        )


def attach(conn: psycopg.Connection, quarter: Quarter, parent: str = PARENT) -> None:
    """``ATTACH PARTITION`` the quarter's table for its range (SHARE UPDATE EXCLUSIVE on the parent)."""
    conn.execute(
        sql.SQL("ALTER TABLE {} ATTACH PARTITION {} FOR VALUES FROM ({}) TO ({})").format(
            sql.Identifier(parent), sql.Identifier(quarter.name), sql.Literal(quarter.start), sql.Literal(quarter.end)
        )
    )


def range_check_name(quarter: Quarter) -> str:
    return f"{quarter.name}_range"


def create_default_partition(conn: psycopg.Connection, parent: str, name: str, lock_timeout: str = "5s") -> bool:
    """A DEFAULT partition of ``parent`` (only the split's shadow parent has one); False if it exists."""
    with conn.transaction(), ddl_lock_timeout(conn, lock_timeout):
        if name in existing_partitions(conn, parent):
            return False
        conn.execute(
            sql.SQL("CREATE TABLE IF NOT EXISTS {} (LIKE {} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)").format(
                sql.Identifier(name), sql.Identifier(parent)
            )
        )
        conn.execute(
            sql.SQL("ALTER TABLE {} ATTACH PARTITION {} DEFAULT").format(sql.Identifier(parent), sql.Identifier(name))
        )
    return True


# --- what the rollover and retention read ------------------------------------------------------------


def archived_quarters(conn: psycopg.Connection) -> frozenset[tuple[int, int]]:
    """The retention horizon: quarters archived and not restored (``partition_archives``), as (year, q)."""
    rows = conn.execute(
        "SELECT DISTINCT year, quarter FROM partition_archives WHERE dropped_at IS NOT NULL AND restored_at IS NULL"
    ).fetchall()
    return frozenset((int(y), int(q)) for y, q in rows)


def data_quarters(conn: psycopg.Connection) -> list[Quarter]:
    """Every quarter (UTC) in which an order was created: its items need a partition."""
    rows = conn.execute(
        """SELECT DISTINCT extract(year FROM t)::int, extract(quarter FROM t)::int
             FROM (SELECT created_at AT TIME ZONE 'UTC' AS t FROM orders WHERE created_at IS NOT NULL) o"""
    ).fetchall()
    return sorted(Quarter(y, q) for y, q in rows)


def quarter_of_name(name: str) -> Quarter | None:
    """``order_items_2024_q3`` → Quarter(2024, 3); None for a name this module did not make."""
    prefix = f"{PARENT}_"
    if not name.startswith(prefix):
        return None
    year, _, q = name[len(prefix) :].partition("_q")
    if not (year.isdigit() and len(year) == 4 and q in ("1", "2", "3", "4")):
        return None
    return Quarter(int(year), int(q))


@dataclass(frozen=True)
class PartitionStat:
    name: str
    quarter: Quarter | None
    row_estimate: int
    bytes: int
    detach_pending: bool


def partition_stats(conn: psycopg.Connection, parent: str = PARENT) -> list[PartitionStat]:
    """Each partition of ``parent``: row estimate (planner statistics), total size, a pending detach."""
    rows = conn.execute(
        """SELECT c.relname, c.reltuples::bigint, pg_total_relation_size(c.oid), i.inhdetachpending
             FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
            WHERE i.inhparent = to_regclass(%s) ORDER BY c.relname""",
        (parent,),
    ).fetchall()
    return [PartitionStat(n, quarter_of_name(n), max(int(r), 0), int(b), bool(p)) for n, r, b, p in rows]
