"""What the mirror should hold, computed from the sandbox store's own objects (never the hub's mapping).

Each function turns one shop entity into the tuple of typed values the checker reads back with SQL. The
raw JSON is what the API serves for it (the sandbox's renderers: the shop's own view of its data).
"""

from __future__ import annotations

from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from shoptet.sandbox.render import render_order, render_product

ORDER_INCLUDE = frozenset({"notes"})  # the hub asks for notes (flows/snapshot_tasks.ORDER_INCLUDE)


def ts(value: str | None) -> datetime | None:
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%S%z") if value else None


def dec(value: Any) -> Decimal | None:
    return None if value is None else Decimal(str(value))


def order_row(o: dict) -> tuple:
    price = o.get("price") or {}
    return (
        o.get("guid"),
        ts(o["creationTime"]),
        ts(o.get("changeTime")),
        (o.get("status") or {}).get("id"),
        o.get("email"),
        o.get("customerGuid"),
        dec(price.get("withVat")),
        price.get("currencyCode"),
        render_order(o, ORDER_INCLUDE),
    )


ORDER_SQL = (
    "SELECT code, guid, created_at, changed_at, status_id, email, customer_guid, price_with_vat, currency_code, "
    "raw FROM orders"
)


def item_rows(o: dict) -> dict[tuple[str, int], tuple]:
    out = {}
    for pos, it in enumerate(o.get("items") or [], 1):
        item_id = it.get("itemId") if it.get("itemId") is not None else -pos
        out[(o["code"], item_id)] = (
            it.get("code"),
            dec(it.get("amount")),
            (it.get("status") or {}).get("id"),
            ts(o["creationTime"]),
        )
    return out


ITEM_SQL = "SELECT order_code, item_id, code, amount, status_id, created_at FROM order_items"


def main_email(c: dict) -> str | None:
    accounts = c.get("accounts") or []
    main = next((a for a in accounts if a.get("mainAccount")), accounts[0] if accounts else {})
    return main.get("email")


def customer_row(c: dict) -> tuple:
    return (main_email(c), ts(c.get("creationTime")), ts(c.get("changeTime")), c)


CUSTOMER_SQL = "SELECT guid, email, created_at, changed_at, raw FROM customers"


def product_row(p: dict) -> tuple:
    return (p.get("name"), p.get("visibility"), ts(p.get("changeTime")), render_product(p))


PRODUCT_SQL = "SELECT guid, name, visibility, changed_at, raw FROM products"
VARIANT_SQL = "SELECT code, product_guid FROM product_variants"


def metrics(orders: list[dict], cancelled: set[int]) -> dict[str, tuple]:
    """Per identity (e-mail lower/trimmed, else customer GUID): orders, revenue with VAT, first and last."""
    acc: dict[str, list] = {}
    for o in orders:
        if (o.get("status") or {}).get("id") in cancelled:
            continue
        email = (o.get("email") or "").strip().lower()
        key = email or o.get("customerGuid")
        if not key:
            continue
        price = o.get("price") or {}
        rate = dec(price.get("exchangeRate")) or Decimal(1)
        revenue = (dec(price.get("withVat")) or Decimal(0)) * rate
        created = ts(o["creationTime"])
        a = acc.setdefault(key, [0, Decimal(0), created, created])
        a[0] += 1
        a[1] += revenue
        a[2], a[3] = min(a[2], created), max(a[3], created)
    return {
        k: (n, rev.quantize(Decimal("0.01"), ROUND_HALF_UP), first, last) for k, (n, rev, first, last) in acc.items()
    }


METRICS_SQL = "SELECT customer_key, orders_count, revenue_with_vat, first_order_at, last_order_at FROM customer_metrics"
