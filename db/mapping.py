"""Snapshot line → table rows. Pure functions, no database.

Values are validated here (so one bad value rejects one line, not a whole COPY batch) but passed on as
the API's own text: PostgreSQL parses ``"121.00"`` into numeric and ``+0200`` offsets into timestamptz
faster than Python would build Decimal and datetime objects.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Callable
from datetime import datetime
from typing import Any

import orjson

_NUMBER = re.compile(r"-?\d+(?:\.\d+)?").fullmatch


class RowError(ValueError):
    """The line cannot become a row; the message is the reason kept in ``snapshot_rejects``."""


def ts(value: Any, field: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise RowError(f"{field}: expected a date-time string, got {type(value).__name__}")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise RowError(f"{field}: invalid date-time {value[:40]!r}") from None
    if parsed.tzinfo is None:
        raise RowError(f"{field}: date-time {value[:40]!r} has no UTC offset")
    return value


def num(value: Any, field: str) -> str | None:
    """Money, amounts and rates: strings with fixed decimals, or (amount, seen live) JSON numbers."""
    if value is None:
        return None
    if isinstance(value, str):
        if _NUMBER(value):
            return value
        raise RowError(f"{field}: invalid number {value[:40]!r}")
    if isinstance(value, bool):
        raise RowError(f"{field}: expected a number, got a boolean")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isfinite(value):
            return repr(value)
        raise RowError(f"{field}: non-finite number")
    raise RowError(f"{field}: expected a number, got {type(value).__name__}")


def integer(value: Any, field: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lstrip("-").isdigit():
        return int(value)
    raise RowError(f"{field}: expected an integer, got {str(value)[:40]!r}")


def text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (dict, list)):
        return orjson.dumps(value).decode()
    return str(value)  # e.g. an EAN sent as a JSON number


def boolean(value: Any, field: str) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    raise RowError(f"{field}: expected true/false, got {str(value)[:40]!r}")


def _obj(value: Any, field: str) -> dict:
    if value is None:
        return {}
    if isinstance(value, dict):
        return value
    raise RowError(f"{field}: expected an object, got {type(value).__name__}")


def _key(value: Any, field: str) -> str:
    if value is None or value == "":
        raise RowError(f"missing key {field}")
    if isinstance(value, (dict, list, bool)):
        raise RowError(f"{field}: invalid key")
    return str(value)


def content_hash(line: bytes) -> str:
    return hashlib.md5(line, usedforsecurity=False).hexdigest()


# --- orders -------------------------------------------------------------------------------------------

ORDER_COLUMNS = (
    "code", "guid", "external_code", "created_at", "changed_at", "status_id", "status_name", "source_name",
    "email", "phone", "customer_guid", "currency_code", "exchange_rate", "price_with_vat",
    "price_without_vat", "price_vat", "price_to_pay", "paid", "vat_payer", "cash_desk_order",
    "billing_method_id", "billing_method_name", "payment_method_guid", "payment_method_name",
    "shipping_guid", "shipping_name",
    "billing_company", "billing_full_name", "billing_street", "billing_house_number", "billing_city",
    "billing_zip", "billing_country_code", "billing_company_id", "billing_vat_id",
    "delivery_company", "delivery_full_name", "delivery_street", "delivery_house_number", "delivery_city",
    "delivery_zip", "delivery_country_code",
)  # fmt: skip

ITEM_COLUMNS = (
    "order_code", "item_id", "created_at", "position", "item_type", "product_guid", "code", "ean", "name",
    "variant_name", "brand", "amount", "amount_unit", "price_ratio", "status_id", "unit_price_with_vat",
    "unit_price_without_vat", "item_price_with_vat", "item_price_without_vat", "item_price_vat", "vat_rate",
)  # fmt: skip


def order_rows(o: dict) -> tuple[tuple, list[tuple]]:
    """One order → (order row, item rows), each in ``ORDER_COLUMNS`` / ``ITEM_COLUMNS`` order."""
    code = _key(o.get("code"), "code")
    created = ts(o.get("creationTime"), "creationTime")
    if created is None:
        raise RowError("missing creationTime")
    status = _obj(o.get("status"), "status")
    source = _obj(o.get("source"), "source")
    price = _obj(o.get("price"), "price")
    bm = _obj(o.get("billingMethod"), "billingMethod")
    pm = _obj(o.get("paymentMethod"), "paymentMethod")
    sh = _obj(o.get("shipping"), "shipping")
    ba = _obj(o.get("billingAddress"), "billingAddress")
    da = _obj(o.get("deliveryAddress"), "deliveryAddress")
    g = ba.get
    d = da.get
    row = (
        code, text(o.get("guid")), text(o.get("externalCode")), created, ts(o.get("changeTime"), "changeTime"),
        integer(status.get("id"), "status.id"), text(status.get("name")), text(source.get("name")),
        text(o.get("email")), text(o.get("phone")), text(o.get("customerGuid")),
        text(price.get("currencyCode")), num(price.get("exchangeRate"), "price.exchangeRate"),
        num(price.get("withVat"), "price.withVat"), num(price.get("withoutVat"), "price.withoutVat"),
        num(price.get("vat"), "price.vat"), num(price.get("toPay"), "price.toPay"),
        boolean(o.get("paid"), "paid"), boolean(o.get("vatPayer"), "vatPayer"),
        boolean(o.get("cashDeskOrder"), "cashDeskOrder"),
        integer(bm.get("id"), "billingMethod.id"), text(bm.get("name")),
        text(pm.get("guid")), text(pm.get("name")), text(sh.get("guid")), text(sh.get("name")),
        text(g("company")), text(g("fullName")), text(g("street")), text(g("houseNumber")), text(g("city")),
        text(g("zip")), text(g("countryCode")), text(g("companyId")), text(g("vatId")),
        text(d("company")), text(d("fullName")), text(d("street")), text(d("houseNumber")), text(d("city")),
        text(d("zip")), text(d("countryCode")),
    )  # fmt: skip
    items = o.get("items")
    if items is None:
        items = []
    elif not isinstance(items, list):
        raise RowError("items: expected a list")
    out = []
    seen: set[int] = set()
    for pos, it in enumerate(items, 1):
        if not isinstance(it, dict):
            raise RowError(f"items[{pos}]: expected an object")
        item_id = integer(it.get("itemId"), f"items[{pos}].itemId")
        if item_id is not None:
            if item_id in seen:
                raise RowError(f"items[{pos}]: duplicate itemId {item_id}")
            seen.add(item_id)
        ip = _obj(it.get("itemPrice"), "itemPrice")
        up = _obj(it.get("unitPrice"), "unitPrice")
        st = it.get("status")
        out.append(
            (
                code, -pos if item_id is None else item_id, created, pos, text(it.get("itemType")),
                text(it.get("productGuid")), text(it.get("code")), text(it.get("ean")), text(it.get("name")),
                text(it.get("variantName")), text(it.get("brand")), num(it.get("amount"), "items.amount"),
                text(it.get("amountUnit")), num(it.get("priceRatio"), "items.priceRatio"),
                integer(st.get("id"), "items.status.id") if isinstance(st, dict) else None,
                num(up.get("withVat"), "unitPrice.withVat"), num(up.get("withoutVat"), "unitPrice.withoutVat"),
                num(ip.get("withVat"), "itemPrice.withVat"), num(ip.get("withoutVat"), "itemPrice.withoutVat"),
                num(ip.get("vat"), "itemPrice.vat"), num(ip.get("vatRate") or up.get("vatRate"), "vatRate"),
            )
        )  # fmt: skip
    return row, out


# --- customers ----------------------------------------------------------------------------------------

CUSTOMER_COLUMNS = (
    "guid", "created_at", "changed_at", "email", "full_name", "phone", "customer_group_id",
    "customer_group_name", "price_list_id", "price_list_name", "disabled_orders",
    "billing_company", "billing_full_name", "billing_street", "billing_house_number", "billing_city",
    "billing_zip", "billing_country_code", "billing_company_id", "billing_vat_id",
)  # fmt: skip


def _main_account(accounts: Any) -> dict:
    if not isinstance(accounts, list) or not accounts:
        return {}
    for acc in accounts:
        if isinstance(acc, dict) and acc.get("mainAccount"):
            return acc
    return accounts[0] if isinstance(accounts[0], dict) else {}


def customer_rows(c: dict) -> tuple[tuple, list[tuple]]:
    guid = _key(c.get("guid"), "guid")
    acc = _main_account(c.get("accounts"))
    grp = _obj(c.get("customerGroup"), "customerGroup")
    pl = _obj(c.get("priceList"), "priceList")
    ba = _obj(c.get("billingAddress"), "billingAddress")
    g = ba.get
    row = (
        guid, ts(c.get("creationTime"), "creationTime"), ts(c.get("changeTime"), "changeTime"),
        text(acc.get("email")), text(acc.get("fullName") or g("fullName")), text(acc.get("phone")),
        integer(grp.get("id"), "customerGroup.id"), text(grp.get("name")),
        integer(pl.get("id"), "priceList.id"), text(pl.get("name")),
        boolean(c.get("disabledOrders"), "disabledOrders"),
        text(g("company")), text(g("fullName")), text(g("street")), text(g("houseNumber")), text(g("city")),
        text(g("zip")), text(g("countryCode")), text(g("companyId")), text(g("vatId")),
    )  # fmt: skip
    return row, []


# --- products -----------------------------------------------------------------------------------------

PRODUCT_COLUMNS = (
    "guid", "type", "name", "visibility", "brand_code", "brand_name", "supplier_name",
    "default_category_guid", "default_category_name", "url", "created_at", "changed_at",
)  # fmt: skip

VARIANT_COLUMNS = (
    "code", "product_guid", "position", "ean", "name", "price", "common_price", "action_price",
    "including_vat", "vat_rate", "currency_code", "stock", "unit", "visible",
)  # fmt: skip


def product_rows(p: dict) -> tuple[tuple, list[tuple]]:
    guid = _key(p.get("guid"), "guid")
    brand = _obj(p.get("brand"), "brand")
    sup = _obj(p.get("supplier"), "supplier")
    cat = _obj(p.get("defaultCategory"), "defaultCategory")
    row = (
        guid, text(p.get("type")), text(p.get("name")), text(p.get("visibility")), text(brand.get("code")),
        text(brand.get("name")), text(sup.get("name")), text(cat.get("guid")), text(cat.get("name")),
        text(p.get("url")), ts(p.get("creationTime"), "creationTime"), ts(p.get("changeTime"), "changeTime"),
    )  # fmt: skip
    variants = p.get("variants") or []
    if not isinstance(variants, list):
        raise RowError("variants: expected a list")
    out = []
    for pos, v in enumerate(variants, 1):
        if not isinstance(v, dict):
            raise RowError(f"variants[{pos}]: expected an object")
        ap = v.get("actionPrice")
        out.append(
            (
                _key(v.get("code"), f"variants[{pos}].code"), guid, pos, text(v.get("ean")), text(v.get("name")),
                num(v.get("price"), "variants.price"), num(v.get("commonPrice"), "variants.commonPrice"),
                num(ap.get("price"), "variants.actionPrice") if isinstance(ap, dict) else None,
                boolean(v.get("includingVat"), "variants.includingVat"), num(v.get("vatRate"), "variants.vatRate"),
                text(v.get("currencyCode")), num(v.get("stock"), "variants.stock"), text(v.get("unit")),
                boolean(v.get("visible"), "variants.visible"),
            )
        )  # fmt: skip
    return row, out


class EntitySpec:
    """What the loader needs to know about one entity: its tables, key and row mapper."""

    def __init__(
        self,
        name: str,
        table: str,
        key: str,
        columns: tuple[str, ...],
        mapper: Callable[[dict], tuple[tuple, list[tuple]]],
        child_table: str | None = None,
        child_key: str | None = None,
        child_columns: tuple[str, ...] = (),
    ) -> None:
        self.name, self.table, self.key, self.columns, self.mapper = name, table, key, columns, mapper
        self.child_table, self.child_key, self.child_columns = child_table, child_key, child_columns


ENTITIES: dict[str, EntitySpec] = {
    "orders": EntitySpec("orders", "orders", "code", ORDER_COLUMNS, order_rows, "order_items", "order_code",
                         ITEM_COLUMNS),
    "customers": EntitySpec("customers", "customers", "guid", CUSTOMER_COLUMNS, customer_rows),
    "products": EntitySpec("products", "products", "guid", PRODUCT_COLUMNS, product_rows, "product_variants",
                           "product_guid", VARIANT_COLUMNS),
}  # fmt: skip
