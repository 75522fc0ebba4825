"""Snapshot line → table rows. Pure functions, no database.

Two speeds, one mapping. ``*_rows`` only extracts values (plus the checks the loader itself depends
on: the key, parseable change/creation times with an offset, the item list); values go to COPY as the
API's own text, and PostgreSQL's input functions reject a bad number or boolean for the whole batch.
The loader then re-maps just that batch line by line through :func:`validate`, which converts or rejects
each value, so one bad value rejects one line and names the field. The value parsers live in
:mod:`db.mapping_values`; they are re-exported here for the loader's imports.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from operator import itemgetter
from typing import Any

from db.mapping_values import (  # noqa: F401 - re-exported: the loader and mapping_fast import them from here
    Column,
    RowError,
    _int,
    _key,
    _obj,
    columns,
    content_hash,
    order_created,
    parse_ts,
    validate,
)


@dataclass(slots=True)
class Mapped:
    """One line's rows, plus what the loader compares and routes by."""

    key: str
    changed: datetime | None
    created: datetime | None
    row: tuple
    children: list[tuple]


# --- orders -------------------------------------------------------------------------------------------

ORDER_COLUMNS = columns(
    "code:t guid:t external_code:t created_at:ts changed_at:ts status_id:i status_name:t source_name:t "
    "email:t phone:t customer_guid:t currency_code:t exchange_rate:n price_with_vat:n price_without_vat:n "
    "price_vat:n price_to_pay:n paid:b vat_payer:b cash_desk_order:b billing_method_id:i "
    "billing_method_name:t payment_method_guid:t payment_method_name:t shipping_guid:t shipping_name:t "
    "billing_company:t billing_full_name:t billing_street:t billing_house_number:t billing_city:t "
    "billing_zip:t billing_country_code:t billing_company_id:t billing_vat_id:t "
    "delivery_company:t delivery_full_name:t delivery_street:t delivery_house_number:t delivery_city:t "
    "delivery_zip:t delivery_country_code:t"
)
ITEM_COLUMNS = columns(
    "order_code:t item_id:i created_at:ts position:i item_type:t product_guid:t code:t ean:t name:t "
    "variant_name:t brand:t amount:n amount_unit:t price_ratio:n status_id:i unit_price_with_vat:n "
    "unit_price_without_vat:n item_price_with_vat:n item_price_without_vat:n item_price_vat:n vat_rate:n"
)


_ORDER_FIELDS = ("guid", "externalCode", "email", "phone", "customerGuid", "paid", "vatPayer", "cashDeskOrder")
_PRICE_FIELDS = ("currencyCode", "exchangeRate", "withVat", "withoutVat", "vat", "toPay")
_ADDRESS_FIELDS = ("company", "fullName", "street", "houseNumber", "city", "zip", "countryCode")
_ITEM_FIELDS = (
    "itemType",
    "productGuid",
    "code",
    "ean",
    "name",
    "variantName",
    "brand",
    "amount",
    "amountUnit",
    "priceRatio",
)
_LINE_PRICE_FIELDS = ("withVat", "withoutVat", "vat", "vatRate")


def _fields(names: tuple[str, ...]) -> Callable[[dict], tuple]:
    """Like ``itemgetter(*names)`` (one C call, the hot path) but a missing key reads as null."""
    fast = itemgetter(*names)

    def get(d: dict) -> tuple:
        try:
            return fast(d)
        except KeyError:
            return tuple(d.get(n) for n in names)

    return get


_order_fields = _fields(_ORDER_FIELDS)
_price_fields = _fields(_PRICE_FIELDS)
_billing_fields = _fields((*_ADDRESS_FIELDS, "companyId", "vatId"))
_delivery_fields = _fields(_ADDRESS_FIELDS)
_item_fields = _fields(_ITEM_FIELDS)
_line_price_fields = _fields(_LINE_PRICE_FIELDS)
_NO_ADDRESS = (None,) * 9


def order_rows(o: dict) -> Mapped:
    code = _key(o.get("code"), "code")
    created_s = o.get("creationTime")
    created = parse_ts(created_s, "creationTime")
    changed_s = o.get("changeTime")
    changed = parse_ts(changed_s, "changeTime")
    created_s, created = order_created(created_s, created, changed_s, changed)
    get = o.get
    status = _obj(get("status"), "status")
    bm = _obj(get("billingMethod"), "billingMethod")
    pm = _obj(get("paymentMethod"), "paymentMethod")
    sh = _obj(get("shipping"), "shipping")
    guid, external, email, phone, customer, paid, vat_payer, cash_desk = _order_fields(o)
    ba = _obj(get("billingAddress"), "billingAddress")
    da = _obj(get("deliveryAddress"), "deliveryAddress")
    row = (
        code,
        guid,
        external,
        created_s,
        changed_s,
        status.get("id"),
        status.get("name"),
        _obj(get("source"), "source").get("name"),
        email,
        phone,
        customer,
        *_price_fields(_obj(get("price"), "price")),
        paid,
        vat_payer,
        cash_desk,
        bm.get("id"),
        bm.get("name"),
        pm.get("guid"),
        pm.get("name"),
        sh.get("guid"),
        sh.get("name"),
        *(_billing_fields(ba) if ba else _NO_ADDRESS),
        *(_delivery_fields(da) if da else _NO_ADDRESS[:7]),
    )
    items = get("items")
    if items is None:
        items = []
    elif not isinstance(items, list):
        raise RowError("items: expected a list")
    out = []
    seen: set = set()
    for pos, it in enumerate(items, 1):
        if type(it) is not dict:
            raise RowError(f"items[{pos}]: expected an object")
        item_id = it.get("itemId")
        if item_id is None:
            item_id = -pos  # the line's position stands in; negative so it never collides with an itemId
        elif type(item_id) is not int:
            item_id = _int(item_id, f"items[{pos}].itemId")
        if item_id in seen:
            raise RowError(f"items[{pos}]: duplicate itemId {item_id}")
        seen.add(item_id)
        ip, up, st = it.get("itemPrice"), it.get("unitPrice"), it.get("status")
        ip = _line_price_fields(ip) if type(ip) is dict else _line_price_fields(_obj(ip, f"items[{pos}].itemPrice"))
        up = _line_price_fields(up) if type(up) is dict else _line_price_fields(_obj(up, f"items[{pos}].unitPrice"))
        st = st if type(st) is dict else _obj(st, f"items[{pos}].status")
        out.append(
            (
                code,
                item_id,
                created_s,
                pos,
                *_item_fields(it),
                st.get("id"),
                up[0],
                up[1],
                ip[0],
                ip[1],
                ip[2],
                ip[3] or up[3],
            )
        )
    return Mapped(code, changed, created, row, out)


# --- customers ----------------------------------------------------------------------------------------

CUSTOMER_COLUMNS = columns(
    "guid:t created_at:ts changed_at:ts email:t full_name:t phone:t customer_group_id:i customer_group_name:t "
    "price_list_id:i price_list_name:t disabled_orders:b billing_company:t billing_full_name:t "
    "billing_street:t billing_house_number:t billing_city:t billing_zip:t billing_country_code:t "
    "billing_company_id:t billing_vat_id:t"
)


def _main_account(accounts: Any) -> dict:
    """Customers have no top-level e-mail: it is the main account's (else the first account's)."""
    if not isinstance(accounts, list) or not accounts:
        return {}
    for acc in accounts:
        if isinstance(acc, dict) and acc.get("mainAccount"):
            return acc
    return accounts[0] if isinstance(accounts[0], dict) else {}


def customer_rows(c: dict) -> Mapped:
    guid = _key(c.get("guid"), "guid")
    created_s, changed_s = c.get("creationTime"), c.get("changeTime")
    created, changed = parse_ts(created_s, "creationTime"), parse_ts(changed_s, "changeTime")
    acc = _main_account(c.get("accounts"))
    grp = _obj(c.get("customerGroup"), "customerGroup")
    pl = _obj(c.get("priceList"), "priceList")
    g = _obj(c.get("billingAddress"), "billingAddress").get
    row = (
        guid,
        created_s,
        changed_s,
        acc.get("email"),
        acc.get("fullName") or g("fullName"),
        acc.get("phone"),
        grp.get("id"),
        grp.get("name"),
        pl.get("id"),
        pl.get("name"),
        c.get("disabledOrders"),
        g("company"),
        g("fullName"),
        g("street"),
        g("houseNumber"),
        g("city"),
        g("zip"),
        g("countryCode"),
        g("companyId"),
        g("vatId"),
    )
    return Mapped(guid, changed, created, row, [])


# --- products -----------------------------------------------------------------------------------------

PRODUCT_COLUMNS = columns(
    "guid:t type:t name:t visibility:t brand_code:t brand_name:t supplier_name:t default_category_guid:t "
    "default_category_name:t url:t created_at:ts changed_at:ts"
)
VARIANT_COLUMNS = columns(
    "code:t product_guid:t position:i ean:t name:t price:n common_price:n action_price:n including_vat:b "
    "vat_rate:n currency_code:t stock:n unit:t visible:b"
)


def product_rows(p: dict) -> Mapped:
    guid = _key(p.get("guid"), "guid")
    created_s, changed_s = p.get("creationTime"), p.get("changeTime")
    created, changed = parse_ts(created_s, "creationTime"), parse_ts(changed_s, "changeTime")
    brand = _obj(p.get("brand"), "brand")
    cat = _obj(p.get("defaultCategory"), "defaultCategory")
    row = (
        guid,
        p.get("type"),
        p.get("name"),
        p.get("visibility"),
        brand.get("code"),
        brand.get("name"),
        _obj(p.get("supplier"), "supplier").get("name"),
        cat.get("guid"),
        cat.get("name"),
        p.get("url"),
        created_s,
        changed_s,
    )
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
                _key(v.get("code"), f"variants[{pos}].code"),
                guid,
                pos,
                v.get("ean"),
                v.get("name"),
                v.get("price"),
                v.get("commonPrice"),
                ap.get("price") if isinstance(ap, dict) else None,
                v.get("includingVat"),
                v.get("vatRate"),
                v.get("currencyCode"),
                v.get("stock"),
                v.get("unit"),
                v.get("visible"),
            )
        )
    return Mapped(guid, changed, created, row, out)


@dataclass(frozen=True)
class EntitySpec:
    """What the loader needs to know about one entity: its tables, key and row mapper."""

    name: str
    table: str
    key: str
    columns: tuple[Column, ...]
    mapper: Callable[[dict], Mapped]
    child_table: str | None = None
    child_key: str | None = None
    child_columns: tuple[Column, ...] = ()
    # Children keyed shop-wide (variant codes) can move between parents: always upsert them.
    child_upsert_key: str | None = None

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    @property
    def child_column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.child_columns)


ENTITIES: dict[str, EntitySpec] = {
    "orders": EntitySpec(
        "orders", "orders", "code", ORDER_COLUMNS, order_rows, "order_items", "order_code", ITEM_COLUMNS
    ),
    "customers": EntitySpec("customers", "customers", "guid", CUSTOMER_COLUMNS, customer_rows),
    "products": EntitySpec(
        "products",
        "products",
        "guid",
        PRODUCT_COLUMNS,
        product_rows,
        "product_variants",
        "product_guid",
        VARIANT_COLUMNS,
        child_upsert_key="code",
    ),
}
