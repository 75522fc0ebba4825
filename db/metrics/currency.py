"""The shop's base currency: what the metrics' revenue (price × exchange rate) is counted in."""

from __future__ import annotations

import psycopg

SAMPLE = 1000  # orders read: the base currency is the one whose orders need no conversion


def base_currency(conn: psycopg.Connection) -> str | None:
    """The most common currency of orders with exchange rate 1 (or none) among a sample; None with no orders."""
    row = conn.execute(
        """SELECT currency_code FROM (
               SELECT currency_code FROM orders
                WHERE currency_code IS NOT NULL AND coalesce(exchange_rate, 1) = 1 LIMIT %s) s
            GROUP BY currency_code ORDER BY count(*) DESC, currency_code LIMIT 1""",
        (SAMPLE,),
    ).fetchone()
    return row[0] if row else None
