"""Customer metrics and RFM segments, computed set-based in PostgreSQL, one transaction per run.

**Identity.** ``customer_key`` is ``metrics_customer_key(email, customer_guid)`` (migration 0003):
``lower(btrim(email))`` when the order has an e-mail, else its customer GUID. Orders with neither are
not attributed; the run reports their count and revenue. Cancelled orders (status −4 plus the
``cancelled_statuses`` setting, see ``db.metrics.rules``) count nowhere.

**Per customer.** Orders, revenue with and without VAT in the shop's base currency (order price ×
its ``exchange_rate``, summed, then rounded to 2 dp; a missing rate counts as 1), average order value
(with VAT), first and last order time, days since the last order (calendar days from its date to the
date of ``as_of``, in the session's TimeZone: it moves once a day, so runs within a day rewrite only
what changed), average days between orders (exact, NULL for one order), R/F/M quintile scores
(``db.metrics.scores``) and the segment (``db.metrics.rules``).

**A run** (``recalculate``):

0. A session advisory lock (one run per schema at a time), and the new watermark: the earlier of now
   and the start of the oldest transaction open in this database. An order write this run cannot see
   belongs to a transaction open now or started later, and the loader stamps ``synced_at = now()``,
   its transaction's start, so the next run's ``synced_at >= watermark`` still finds it.
1. REPEATABLE READ: every statement below sees the same orders.
2. The identities to recompute (``db.metrics.aggregate``). Full: all. Incremental: the identities of
   orders with ``synced_at`` or ``changed_at`` at or after the stored watermark (new, edited, newly
   cancelled orders), plus the keys in ``customer_metrics_queue``: identities that *lost* an order,
   which ``orders`` can no longer tell (an e-mail or GUID edit moves the order to another identity; a
   delete by a full snapshot, the change log or by hand removes it). Triggers on ``orders`` queue
   those keys in the writing transaction.
3. Aggregate those identities' orders into a temp table; delete touched identities left without a
   counted order (all cancelled or deleted); upsert the rest, skipping rows whose values are unchanged.
   A full run scores while it upserts (ntile windows over the temp table): one write per row.
4. An incremental run re-scores everyone in one statement (recency moves daily, quintile boundaries
   move with every new customer) and writes only the rows whose values change.
5. ``previous_segment`` holds each customer's segment before this run; the run returns the movement
   counts and the unattributed orders, and saves the watermark, its settings and the segment counts in
   ``sync_state`` ('customer_metrics'). A run that rewrote over 10 % of the rows vacuums the table.

A run is a full recompute when asked, on the first run, when ``cancelled_statuses`` differs from the
last run's, and after ``TRUNCATE orders`` (the trigger queues a NULL key). Why incremental equals
full: every order that changed is found by its new identity (watermark) and its old one (queue),
recomputing an identity reads all its orders, and scores depend only on the stored aggregates, in a
total order. The tests check it on random edits, moves, deletes and inserts.

**Limits.** Edits made by hand in SQL that change an order's status or prices without touching
``synced_at`` are invisible to incremental runs (``hub metrics --full`` repairs). The watermark reads
other sessions' transaction starts from ``pg_stat_activity``; a role that cannot see them (not the same
role, no ``pg_read_all_stats``) should not write orders while metrics run, or run ``--full`` nightly.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from datetime import datetime
from functools import partial
from typing import Any

import psycopg
from psycopg import sql

from db.advisory import AdvisoryKey, session_lock
from db.connection import connect
from db.locks import guard_write
from db.metrics.aggregate import (
    AGGREGATES,
    METRICS,
    NEW,
    ORDERS,
    QUEUE,
    TOUCHED,
    aggregate,
    collect_touched,
    customer_key,
    delete_vanished,
    upsert,
)
from db.metrics.result import MetricsResult
from db.metrics.rules import CANCELLED_STATUS, DEFAULT_CANCELLED_STATUSES, DEFAULT_SEGMENT_RULES, SegmentRule
from db.metrics.scores import rescore, scored
from db.sync_state import get_state, save_watermark

__all__ = ["LOCK_NAMESPACE", "MetricsBusyError", "MetricsResult", "STATE_KEY", "recalculate"]

log = logging.getLogger(__name__)

STATE_KEY = "customer_metrics"
LOCK_NAMESPACE = 0x5B0C  # first key of the two-int advisory lock; the second is the schema's hash
_LOCK = AdvisoryKey.per_schema(LOCK_NAMESPACE)  # one run per schema at a time
VACUUM_SHARE, VACUUM_MIN_ROWS = 0.1, 10_000  # a run writing more than this share of rows vacuums after


class MetricsBusyError(RuntimeError):
    """Another customer metrics run holds the lock for this schema."""


def recalculate(
    url: str,
    *,
    schema: str = "public",
    full: bool = False,
    as_of: datetime | None = None,
    cancelled_statuses: Sequence[int] = DEFAULT_CANCELLED_STATUSES,
    segment_rules: Sequence[SegmentRule] = DEFAULT_SEGMENT_RULES,
) -> MetricsResult:
    """Bring ``customer_metrics`` up to date (see the module docstring); raises MetricsBusyError."""
    started = time.perf_counter()
    cancelled = sorted({CANCELLED_STATUS, *cancelled_statuses})
    busy = partial(
        MetricsBusyError, f"another customer metrics run is in progress on schema {schema!r}; try again when it ends"
    )
    with connect(url, schema, autocommit=True) as conn, session_lock(conn, _LOCK, wait=False, busy=busy):
        watermark = _next_watermark(conn)
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        with conn.transaction():
            guard_write(conn)  # the first statement: see its docstring on REPEATABLE READ
            result = _run(conn, full, as_of, cancelled, segment_rules, watermark)
            save_watermark(conn, STATE_KEY, watermark, _state_details(result))
        written = result.inserted + result.updated + result.removed + result.rescored
        if written > max(VACUUM_MIN_ROWS, result.customers * VACUUM_SHARE):
            # The next run reads its boundaries with index-only scans, which need the visibility map
            # this rewrite cleared; autovacuum would restore it, but later.
            conn.execute(sql.SQL("VACUUM (ANALYZE) {}").format(METRICS))
            result.vacuumed = True
    result.seconds = round(time.perf_counter() - started, 3)
    log.info(
        "customer metrics (%s, %s): %d customers, %d recomputed, %d removed, %d moved segment, "
        "%d unattributed orders, %.2f s",
        result.mode,
        result.reason,
        result.customers,
        result.recomputed,
        result.removed,
        result.moved,
        result.unattributed_orders,
        result.seconds,
    )
    return result


def _next_watermark(conn: psycopg.Connection) -> datetime:
    # Read before this run's snapshot exists (autocommit): see step 0 of the module docstring.
    return conn.execute(
        """SELECT least(clock_timestamp(), min(xact_start)) FROM pg_stat_activity
           WHERE datname = current_database() AND pid <> pg_backend_pid()
             AND backend_type = 'client backend' AND xact_start IS NOT NULL"""
    ).fetchone()[0]


def _run(
    conn: psycopg.Connection,
    full: bool,
    as_of: datetime | None,
    cancelled: list[int],
    rules: Sequence[SegmentRule],
    watermark: datetime,
) -> MetricsResult:
    as_of = conn.execute("SELECT coalesce(%s::timestamptz, now())", (as_of,)).fetchone()[0]
    state = get_state(conn, STATE_KEY)
    reset = conn.execute(sql.SQL("SELECT count(*) FROM {} WHERE customer_key IS NULL").format(QUEUE)).fetchone()[0]
    reason = (
        "requested"
        if full
        else "first run"
        if state is None or state.watermark is None
        else "orders were truncated"
        if reset
        else "cancelled statuses changed"
        if state.details.get("cancelled_statuses") != cancelled
        else None
    )
    result = MetricsResult(
        mode="full" if reason else "incremental",
        reason=reason or "changes since the last run",
        as_of=as_of,
        watermark=watermark,
        cancelled_statuses=cancelled,
    )
    params = {"cancelled": cancelled, "as_of": as_of}
    if reason:
        removed, moves = _full(conn, result, rules, params)
    else:
        removed, moves = _incremental(conn, result, rules, params, state.watermark, state.details)
    result.removed = sum(n for _, n in removed)
    result.moves = moves + [(s, None, n) for s, n in removed]
    result.customers = sum(n for _, _, n in moves)
    result.unattributed_orders, result.unattributed_revenue = conn.execute(
        sql.SQL(
            """SELECT count(*), coalesce(round(sum(price_with_vat * coalesce(exchange_rate, 1)), 2), 0)
               FROM {orders} WHERE {key} IS NULL AND (status_id = ANY(%(cancelled)s::int[])) IS NOT TRUE"""
        ).format(orders=ORDERS, key=customer_key()),
        params,
    ).fetchone()
    return result


Removed = list[tuple[str | None, int]]
Moves = list[tuple[str | None, str | None, int]]


def _full(
    conn: psycopg.Connection, result: MetricsResult, rules: Sequence[SegmentRule], params: dict[str, Any]
) -> tuple[Removed, Moves]:
    conn.execute(sql.SQL("DELETE FROM {}").format(QUEUE))  # rows this snapshot sees; later ones stay
    result.recomputed = aggregate(conn, None, params)
    removed = delete_vanished(conn, None)
    query, query_params = scored(NEW, ("customer_key", *AGGREGATES), rules)
    result.inserted, result.updated = upsert(conn, (query, {**query_params, "as_of": params["as_of"]}))
    moves = conn.execute(
        sql.SQL("SELECT previous_segment, segment, count(*) FROM {} GROUP BY 1, 2").format(METRICS)
    ).fetchall()
    return removed, [(p, c, n) for p, c, n in moves]


def _incremental(
    conn: psycopg.Connection,
    result: MetricsResult,
    rules: Sequence[SegmentRule],
    params: dict[str, Any],
    since: datetime,
    last: dict[str, Any],
) -> tuple[Removed, Moves]:
    collect_touched(conn, since)
    result.recomputed = aggregate(conn, TOUCHED, params)
    removed = delete_vanished(conn, TOUCHED)
    result.inserted, result.updated = upsert(conn)
    expected = None
    if isinstance(last.get("segments"), dict):
        # The last run's counts, less this run's removals, plus its new (not yet scored) customers.
        expected = {k: int(v) for k, v in last["segments"].items()}
        for segment, n in removed:
            expected[segment] = expected.get(segment, 0) - n
        expected[None] = result.inserted
    result.rescored, moves = rescore(conn, rules, params["as_of"], expected)
    return removed, moves


def _state_details(result: MetricsResult) -> dict[str, Any]:
    """What the next run compares and counts on (cancelled statuses, customers per segment) plus this
    run's counters: no personal data."""
    segments: dict[str, int] = {}
    for _, segment, n in result.moves:
        if segment is not None:
            segments[segment] = segments.get(segment, 0) + n
    return {
        "cancelled_statuses": result.cancelled_statuses,
        "segments": segments,
        "mode": result.mode,
        "as_of": result.as_of.isoformat(),
        "customers": result.customers,
        "recomputed": result.recomputed,
        "removed": result.removed,
        "moved": result.moved,
        "unattributed_orders": result.unattributed_orders,
        "unattributed_revenue": str(result.unattributed_revenue),
    }
