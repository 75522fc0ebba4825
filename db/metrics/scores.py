"""R/F/M quintile scores, segments and days since the last order for every customer (``db.metrics.compute`` step 4).

A score is ``ntile(5)`` over all customers in its ``ORDERINGS`` order. A full run computes them as
windows while it upserts every customer (``scored``). An incremental run has rewritten a few customers
and must re-score everyone (``rescore``): instead of three window sorts of every customer (1.4 s at
500k customers) it reads the rows at the four bucket boundaries off one index per ordering (migration
0003) with a cursor that MOVEs over the index without sending rows (~0.15 s), then scores each customer
in one scan by how many boundary rows it sorts after, which is exactly its ntile(5) bucket, and writes
only the rows that change. The segment is one subscript into the rules' 45-cell table
(``db.metrics.rules``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql

from db.metrics.rules import SegmentRule, segment_of, segment_table

_I = sql.Identifier
METRICS, SCORED = _I("customer_metrics"), _I("cm_scored")
# Each score's order, ascending (the last fifth scores 5). Ties continue with the other measures and end
# on the key: a total order, so equal inputs always get equal scores and an incremental run equals a
# full one. Index ix_customer_metrics_<score>_order has exactly these columns.
ORDERINGS: dict[str, tuple[str, ...]] = {
    "r": ("last_order_at", "orders_count", "revenue_with_vat", "customer_key"),
    "f": ("orders_count", "revenue_with_vat", "last_order_at", "customer_key"),
    "m": ("revenue_with_vat", "orders_count", "last_order_at", "customer_key"),
}
_TYPES = {"last_order_at": "timestamptz", "orders_count": "int", "revenue_with_vat": "numeric", "customer_key": "text"}

Moves = list[tuple[str | None, str | None, int]]


def ntile_boundaries(n: int, buckets: int = 5) -> list[int]:
    """1-based positions of the last row of buckets 1..4 as ``ntile(5)`` fills them (larger ones first)."""
    q, r = divmod(n, buckets)
    return [min(n, i * q + min(i, r)) for i in range(1, buckets)] if n else []


def boundaries(conn: psycopg.Connection, n: int) -> tuple[dict[str, list[tuple]], int]:
    """Per score, the rows at the boundary positions for ``n`` customers, and how many rows there are.

    The first cursor walks on to the end, so a wrong ``n`` (the caller's expectation) is detected.
    """
    positions = ntile_boundaries(n)
    out: dict[str, list[tuple]] = {}
    seen = n
    for score, cols in ORDERINGS.items():
        cursor = _I(f"cm_order_{score}")
        columns = sql.SQL(", ").join(map(_I, cols))
        # A cursor is planned for a fast start: an index-only scan in this order, no sort (EXPLAIN in
        # benchmarks/customer_metrics.py --explain).
        conn.execute(
            sql.SQL("DECLARE {} NO SCROLL CURSOR FOR SELECT {} FROM {} ORDER BY {}").format(
                cursor, columns, METRICS, columns
            )
        )
        rows: list[tuple] = []
        pos, last = 0, None  # rows the cursor has passed; the last one fetched
        for p in positions:
            if p > pos + 1:
                pos += conn.execute(sql.SQL("MOVE FORWARD {} IN {}").format(sql.Literal(p - pos - 1), cursor)).rowcount
            if p == pos + 1 and (last := conn.execute(sql.SQL("FETCH NEXT FROM {}").format(cursor)).fetchone()):
                pos += 1
            if pos < p:  # fewer rows than expected
                break
            rows.append(last)  # a repeated position (fewer than 5 customers) repeats the row
        if score == "r":
            seen = pos + conn.execute(sql.SQL("MOVE FORWARD ALL IN {}").format(cursor)).rowcount
        conn.execute(sql.SQL("CLOSE {}").format(cursor))
        out[score] = rows
        if seen != n:
            break
    return out, seen


def score_expression(score: str, bounds: list[tuple], params: dict[str, Any]) -> sql.Composed:
    """``1 + (number of boundary rows this row sorts after)``; adds the boundary values to ``params``."""
    cols = ORDERINGS[score]
    row = sql.SQL("({})").format(sql.SQL(", ").join(map(_I, cols)))
    terms = []
    for i, bound in enumerate(bounds):
        names = [f"{score}{i}_{j}" for j in range(len(cols))]
        params.update(zip(names, bound, strict=True))
        values = sql.SQL(", ").join(
            sql.SQL("{}::{}").format(sql.Placeholder(name), sql.SQL(_TYPES[col]))
            for name, col in zip(names, cols, strict=True)
        )
        terms.append(sql.SQL("({} > ({}))::int").format(row, values))
    return sql.SQL("(1 + {})::smallint").format(sql.SQL(" + ").join(terms) if terms else sql.SQL("0"))


def scored(source: sql.Composable, columns: Sequence[str], rules: Sequence[SegmentRule]) -> tuple[sql.Composed, dict]:
    """``SELECT <columns>, days, r, f, m, segment FROM source`` with the scores as ntile(5) windows.

    For a full run, whose temp table holds every customer: scoring while upserting writes each row
    once, where ``rescore`` would rewrite all of them after the upsert.
    """
    windows = {
        score: sql.SQL("ntile(5) OVER (ORDER BY {})::smallint").format(sql.SQL(", ").join(map(_I, cols)))
        for score, cols in ORDERINGS.items()
    }
    table, params = segment_table(rules)
    s = lambda c: _I("s", c)  # noqa: E731
    cols = sql.SQL(", ").join(map(_I, columns))
    return sql.SQL(
        """SELECT {cols}, days, r, f, m, {segment} AS segment FROM (
             SELECT {cols}, greatest(0, %(as_of)s::timestamptz::date - last_order_at::date) AS days,
                    {r} AS r, {f} AS f, {m} AS m
             FROM {source}) s"""
    ).format(cols=cols, source=source, segment=segment_of(table, s("r"), s("f"), s("m")), **windows), params


def rescore(
    conn: psycopg.Connection,
    rules: Sequence[SegmentRule],
    as_of: datetime,
    expected: dict[str | None, int] | None = None,
) -> tuple[int, Moves]:
    """Score everyone in one statement; write only the rows whose values change.

    ``previous_segment`` takes the old segment (rows not written already hold it). ``expected`` are the
    segment counts before this step (None: unscored new customers) when the caller can vouch for them;
    they spare a count and a GROUP BY over every customer, and are dropped if the row count disagrees.
    Returns the rows written and (previous segment, segment, customers) for everyone.
    """
    n = sum(expected.values()) if expected is not None else _count(conn)
    bounds, seen = boundaries(conn, n)
    if seen != n:
        expected = None
        bounds, _ = boundaries(conn, seen)
    params: dict[str, Any] = {"as_of": as_of}
    scores = {score: score_expression(score, bounds.get(score, []), params) for score in ORDERINGS}
    table, table_params = segment_table(rules)
    s = lambda c: _I("s", c)  # noqa: E731
    conn.execute(
        sql.SQL(
            """CREATE TEMP TABLE {scored} ON COMMIT DROP AS
               SELECT customer_key, days, r, f, m, segment, old_segment FROM (
                 SELECT s.*, {segment} AS segment FROM (
                   SELECT customer_key, segment AS old_segment, previous_segment AS old_previous,
                     days_since_last_order AS old_days, r_score AS old_r, f_score AS old_f, m_score AS old_m,
                     greatest(0, %(as_of)s::timestamptz::date - last_order_at::date) AS days,
                     {r} AS r, {f} AS f, {m} AS m
                   FROM {metrics}) s) t
               WHERE (old_days, old_r, old_f, old_m, old_segment) IS DISTINCT FROM (days, r, f, m, segment)
                  OR old_previous IS DISTINCT FROM old_segment"""
        ).format(scored=SCORED, metrics=METRICS, segment=segment_of(table, s("r"), s("f"), s("m")), **scores),
        {**params, **table_params},
    )
    conn.execute(sql.SQL("ANALYZE {}").format(SCORED))  # few rows: a nested loop on the key; all: a hash join
    written = conn.execute(
        sql.SQL(
            """UPDATE {metrics} AS c
               SET days_since_last_order = s.days, r_score = s.r, f_score = s.f, m_score = s.m,
                   previous_segment = s.old_segment, segment = s.segment, updated_at = now()
               FROM {scored} s WHERE c.customer_key = s.customer_key"""
        ).format(metrics=METRICS, scored=SCORED)
    ).rowcount
    if expected is None:
        rows = conn.execute(sql.SQL("SELECT previous_segment, segment, count(*) FROM {} GROUP BY 1, 2").format(METRICS))
        return written, [(p, c, k) for p, c, k in rows]
    return written, _moves(conn, expected)


def _count(conn: psycopg.Connection) -> int:
    return conn.execute(sql.SQL("SELECT count(*) FROM {}").format(METRICS)).fetchone()[0]


def _moves(conn: psycopg.Connection, before: dict[str | None, int]) -> Moves:
    """(previous, segment, customers) from the written rows; every row not written stayed put."""
    written = conn.execute(sql.SQL("SELECT old_segment, segment, count(*) FROM {} GROUP BY 1, 2").format(SCORED))
    moves: Counter[tuple[str | None, str | None]] = Counter()
    left: Counter[str | None] = Counter(before)
    for old, new, k in written:
        moves[(old, new)] += k
        left[old] -= k
    for segment, k in left.items():
        if k > 0 and segment is not None:
            moves[(segment, segment)] += k
    return [(p, c, k) for (p, c), k in moves.items()]
