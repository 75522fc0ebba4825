"""Steps 2–3 of a metrics run (``db.metrics.compute``): which identities to recompute, their aggregates, and
writing them to ``customer_metrics``. Each function is one statement on the run's connection.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql

_I = sql.Identifier
ORDERS, METRICS, QUEUE = _I("orders"), _I("customer_metrics"), _I("customer_metrics_queue")
TOUCHED, NEW = _I("cm_touched"), _I("cm_new")
KEY_FUNCTION = _I("metrics_customer_key")
# Columns the aggregate step owns (the score step owns days/scores/segments).
AGGREGATES = (
    "customer_guid",
    "email",
    "orders_count",
    "revenue_with_vat",
    "revenue_without_vat",
    "avg_order_value",
    "first_order_at",
    "last_order_at",
    "avg_days_between_orders",
)
# Score columns of customer_metrics → the names ``db.metrics.scores.scored`` gives them.
SCORE_COLUMNS = {"days_since_last_order": "days", "r_score": "r", "f_score": "f", "m_score": "m", "segment": "segment"}


def customer_key(alias: str | None = None) -> sql.Composed:
    """The identity expression, spelled exactly like the index ``ix_orders_customer_key`` so it is used."""
    col = (lambda c: _I(alias, c)) if alias else _I
    return sql.SQL("{}({}, {})").format(KEY_FUNCTION, col("email"), col("customer_guid"))


def collect_touched(conn: psycopg.Connection, since: datetime) -> None:
    """Identities of orders written since ``since``, plus the queue (identities that lost an order)."""
    conn.execute(sql.SQL("CREATE TEMP TABLE {} (customer_key text PRIMARY KEY) ON COMMIT DROP").format(TOUCHED))
    # BitmapOr of ix_orders_synced_at and ix_orders_changed_at: a few thousand rows, not a seq scan.
    # ">=": a transaction open at the last run has synced_at = its start, which may be the watermark.
    conn.execute(
        sql.SQL(
            """WITH q AS (DELETE FROM {queue} RETURNING customer_key)
               INSERT INTO {touched}
               SELECT customer_key FROM q WHERE customer_key IS NOT NULL
               UNION
               SELECT {key} FROM {orders}
               WHERE (synced_at >= %(since)s OR changed_at >= %(since)s) AND {key} IS NOT NULL"""
        ).format(queue=QUEUE, touched=TOUCHED, orders=ORDERS, key=customer_key()),
        {"since": since},
    )
    conn.execute(sql.SQL("ANALYZE {}").format(TOUCHED))  # a temp table has no statistics otherwise


def aggregate(conn: psycopg.Connection, touched: sql.Identifier | None, params: dict[str, Any]) -> int:
    """The aggregates of the touched identities (all when ``touched`` is None) into a temp table."""
    only = sql.SQL("")
    if touched is not None:
        # Semi-join: a nested loop over the touched keys into ix_orders_customer_key.
        only = sql.SQL("AND {key} IN (SELECT customer_key FROM {touched})").format(
            key=customer_key("o"), touched=touched
        )
    base = sql.SQL("coalesce(o.exchange_rate, 1)")
    conn.execute(
        sql.SQL(
            """CREATE TEMP TABLE {new} ON COMMIT DROP AS
               SELECT {key} AS customer_key,
                      max(nullif(o.customer_guid, '')) AS customer_guid,
                      max({email}) AS email,
                      count(*)::int AS orders_count,
                      round(coalesce(sum(o.price_with_vat * {base}), 0), 2) AS revenue_with_vat,
                      round(coalesce(sum(o.price_without_vat * {base}), 0), 2) AS revenue_without_vat,
                      round(coalesce(sum(o.price_with_vat * {base}), 0) / count(*), 2) AS avg_order_value,
                      min(o.created_at) AS first_order_at,
                      max(o.created_at) AS last_order_at,
                      CASE WHEN count(*) > 1 THEN round(
                        extract(epoch FROM max(o.created_at) - min(o.created_at)) / 86400 / (count(*) - 1), 2)
                      END AS avg_days_between_orders
               FROM {orders} o
               WHERE {key} IS NOT NULL AND (o.status_id = ANY(%(cancelled)s::int[])) IS NOT TRUE {only}
               GROUP BY 1"""
        ).format(
            new=NEW,
            orders=ORDERS,
            key=customer_key("o"),
            only=only,
            base=base,
            # The identity function with no GUID is the normalized e-mail, or NULL.
            email=sql.SQL("{}({}, NULL)").format(KEY_FUNCTION, _I("o", "email")),
        ),
        params,
    )
    conn.execute(sql.SQL("ANALYZE {}").format(NEW))
    return conn.execute(sql.SQL("SELECT count(*) FROM {}").format(NEW)).fetchone()[0]


def delete_vanished(conn: psycopg.Connection, touched: sql.Identifier | None) -> list[tuple[str | None, int]]:
    """Delete (touched) customers without a counted order left; their count per old segment."""
    scope = (
        sql.SQL("")
        if touched is None
        else sql.SQL("AND m.customer_key IN (SELECT customer_key FROM {})").format(touched)
    )
    rows = conn.execute(
        sql.SQL(
            """WITH d AS (
                 DELETE FROM {metrics} m
                 WHERE NOT EXISTS (SELECT 1 FROM {new} n WHERE n.customer_key = m.customer_key) {scope}
                 RETURNING m.segment)
               SELECT segment, count(*) FROM d GROUP BY segment"""
        ).format(metrics=METRICS, new=NEW, scope=scope)
    ).fetchall()
    return [(s, n) for s, n in rows]


def upsert(conn: psycopg.Connection, scored_source: tuple[sql.Composed, dict] | None = None) -> tuple[int, int]:
    """Upsert the temp table's aggregates; from ``scored_source`` (a full run) also scores and segments.

    Rows whose values would not change are not rewritten. A full run also rewrites rows whose
    ``previous_segment`` still shows an older move: every row ends with previous = its old segment.
    """
    cols, values = list(AGGREGATES), [_I(c) for c in AGGREGATES]
    source: sql.Composable = NEW
    params: dict[str, Any] = {}
    extra, stale = [], sql.SQL("false")
    if scored_source is not None:
        query, params = scored_source
        source = sql.SQL("({}) AS s").format(query)
        cols += SCORE_COLUMNS.keys()
        values += [_I(v) for v in SCORE_COLUMNS.values()]
        extra = [sql.SQL("previous_segment = m.segment")]  # m: the row as it was
        stale = sql.SQL("m.previous_segment IS DISTINCT FROM m.segment")
    sets = [sql.SQL("{} = {}").format(_I(c), _I("excluded", c)) for c in cols] + extra
    inserted, updated = conn.execute(
        sql.SQL(
            """WITH up AS (
                 INSERT INTO {metrics} AS m (customer_key, {targets}, updated_at)
                 SELECT customer_key, {values}, now() FROM {source}
                 ON CONFLICT (customer_key) DO UPDATE SET {sets}, updated_at = now()
                 WHERE ({current}) IS DISTINCT FROM ({excluded}) OR {stale}
                 RETURNING (xmax = 0) AS inserted)
               SELECT count(*) FILTER (WHERE inserted), count(*) FILTER (WHERE NOT inserted) FROM up"""
        ).format(
            metrics=METRICS,
            targets=sql.SQL(", ").join(map(_I, cols)),
            values=sql.SQL(", ").join(values),
            source=source,
            sets=sql.SQL(", ").join(sets),
            current=sql.SQL(", ").join(_I("m", c) for c in cols),
            excluded=sql.SQL(", ").join(_I("excluded", c) for c in cols),
            stale=stale,
        ),
        params,
    ).fetchone()
    return inserted, updated
