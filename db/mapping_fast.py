"""Order lines decoded straight into the few fields the tables take (msgspec), skipping the rest.

An order line is ~5 KB of JSON of which the tables take ~150 values; building Python dicts for all of
it (orjson) and then picking values out cost twice what decoding only the wanted fields does
(docs/benchmarks.md). The result is the same :class:`~db.mapping.Mapped` as
:func:`db.mapping.order_rows`: a test holds the two equal on every line the generator writes.

Only the shapes the API documents are accepted here. Anything else (an object where a string
belongs, a list where an object belongs, …) raises :class:`NotFast`, and the caller maps the line
with ``order_rows``, which either handles the quirk or rejects the line with a reason.
"""

from __future__ import annotations

from typing import Any

import msgspec

from db.mapping import Mapped, RowError, _int, _key, parse_ts
from db.mapping_values import order_created

V = Any  # a value passed through as sent; the column's input function (or the exact path) judges it


class NotFast(Exception):
    """The line is not in the documented shape: map it the slow way."""


class _Named(msgspec.Struct):
    id: V = None
    name: V = None
    guid: V = None


class _Price(msgspec.Struct):
    currencyCode: V = None
    exchangeRate: V = None
    withVat: V = None
    withoutVat: V = None
    vat: V = None
    toPay: V = None


class _LinePrice(msgspec.Struct):
    withVat: V = None
    withoutVat: V = None
    vat: V = None
    vatRate: V = None


class _Address(msgspec.Struct):
    company: V = None
    fullName: V = None
    street: V = None
    houseNumber: V = None
    city: V = None
    zip: V = None
    countryCode: V = None
    companyId: V = None
    vatId: V = None


class _Item(msgspec.Struct):
    itemId: V = None
    itemType: V = None
    productGuid: V = None
    code: V = None
    ean: V = None
    name: V = None
    variantName: V = None
    brand: V = None
    amount: V = None
    amountUnit: V = None
    priceRatio: V = None
    status: _Named | None = None
    itemPrice: _LinePrice | None = None
    unitPrice: _LinePrice | None = None


class _Order(msgspec.Struct):
    code: V = None
    guid: V = None
    externalCode: V = None
    creationTime: V = None
    changeTime: V = None
    email: V = None
    phone: V = None
    customerGuid: V = None
    paid: V = None
    vatPayer: V = None
    cashDeskOrder: V = None
    status: _Named | None = None
    source: _Named | None = None
    billingMethod: _Named | None = None
    paymentMethod: _Named | None = None
    shipping: _Named | None = None
    price: _Price | None = None
    billingAddress: _Address | None = None
    deliveryAddress: _Address | None = None
    items: list[_Item] | None = None


_decode = msgspec.json.Decoder(_Order).decode
_NONE_NAMED = _Named()
_NONE_PRICE = _Price()
_NONE_LINE_PRICE = _LinePrice()
_NO_ADDRESS = _Address()


def order_rows_fast(line: bytes) -> Mapped:
    """``order_rows(orjson.loads(line))`` for a documented-shape line; NotFast otherwise."""
    try:
        o = _decode(line)
    except msgspec.DecodeError as exc:  # not JSON, or not the documented shape (ValidationError)
        raise NotFast(str(exc)) from None
    code = _key(o.code, "code")
    created_s, changed_s = o.creationTime, o.changeTime
    created = parse_ts(created_s, "creationTime")
    changed = parse_ts(changed_s, "changeTime")
    created_s, created = order_created(created_s, created, changed_s, changed)
    st, src = o.status or _NONE_NAMED, o.source or _NONE_NAMED
    bm, pm, sh = o.billingMethod or _NONE_NAMED, o.paymentMethod or _NONE_NAMED, o.shipping or _NONE_NAMED
    pr = o.price or _NONE_PRICE
    ba = o.billingAddress
    da = o.deliveryAddress or _NO_ADDRESS
    if ba is None:
        ba = _NO_ADDRESS
    row = (
        code,
        o.guid,
        o.externalCode,
        created_s,
        changed_s,
        st.id,
        st.name,
        src.name,
        o.email,
        o.phone,
        o.customerGuid,
        pr.currencyCode,
        pr.exchangeRate,
        pr.withVat,
        pr.withoutVat,
        pr.vat,
        pr.toPay,
        o.paid,
        o.vatPayer,
        o.cashDeskOrder,
        bm.id,
        bm.name,
        pm.guid,
        pm.name,
        sh.guid,
        sh.name,
        ba.company,
        ba.fullName,
        ba.street,
        ba.houseNumber,
        ba.city,
        ba.zip,
        ba.countryCode,
        ba.companyId,
        ba.vatId,
        da.company,
        da.fullName,
        da.street,
        da.houseNumber,
        da.city,
        da.zip,
        da.countryCode,
    )
    out = []
    seen: set = set()
    for pos, it in enumerate(o.items or (), 1):
        item_id = it.itemId
        if item_id is None:
            item_id = -pos  # as in order_rows: the line's position stands in
        elif type(item_id) is not int:
            item_id = _int(item_id, f"items[{pos}].itemId")
        if item_id in seen:
            raise RowError(f"items[{pos}]: duplicate itemId {item_id}")
        seen.add(item_id)
        ip, up = it.itemPrice or _NONE_LINE_PRICE, it.unitPrice or _NONE_LINE_PRICE
        out.append(
            (
                code,
                item_id,
                created_s,
                pos,
                it.itemType,
                it.productGuid,
                it.code,
                it.ean,
                it.name,
                it.variantName,
                it.brand,
                it.amount,
                it.amountUnit,
                it.priceRatio,
                (it.status or _NONE_NAMED).id,
                up.withVat,
                up.withoutVat,
                ip.withVat,
                ip.withoutVat,
                ip.vat,
                ip.vatRate or up.vatRate,
            )
        )
    return Mapped(code, changed, created, row, out)
