"""Row mapping for the quirks of reference §9 (no database)."""

from __future__ import annotations

import pytest

from db.mapping import (
    CUSTOMER_COLUMNS,
    ITEM_COLUMNS,
    ORDER_COLUMNS,
    RowError,
    customer_rows,
    order_rows,
    product_rows,
    validate,
)
from db.partitions.rollover import Quarter
from shoptet.sandbox.generator import iter_orders
from tests.factories import customer, order, product

COL = {c.name: i for i, c in enumerate(ORDER_COLUMNS)}
ITEM = {c.name: i for i, c in enumerate(ITEM_COLUMNS)}


def test_offsets_without_colon_parse_and_quarter_is_utc():
    m = order_rows(order(created="2026-04-01T01:00:00+0200", changed="2026-04-02T00:00:00+0200"))
    assert m.created.utcoffset().total_seconds() == 7200
    assert Quarter.of(m.created).key == (2026, 1)  # 31 March 23:00 UTC
    assert m.row[COL["created_at"]] == "2026-04-01T01:00:00+0200"  # passed on as sent


def test_amount_as_json_number_and_string_money():
    o = order()
    o["items"][0]["amount"] = 2
    o["items"][1]["amount"] = 1.5
    m = order_rows(o)
    rows = [validate(r, ITEM_COLUMNS) for r in m.children]
    assert [r[ITEM["amount"]] for r in rows[:2]] == ["2", "1.5"]
    assert rows[0][ITEM["item_price_with_vat"]] == "998.00"


def test_nullable_paid_vat_payer_and_change_time():
    m = order_rows(order(changed=None, paid=None, vatPayer=None, cashDeskOrder=None))
    row = validate(m.row, ORDER_COLUMNS)
    assert m.changed is None
    assert (row[COL["paid"]], row[COL["vat_payer"]], row[COL["cash_desk_order"]]) == (None, None, None)


def test_cancelled_order_header_zero_items_keep_prices():
    o = order(status={"id": -4, "name": "Stornována"})
    o["price"].update(withVat="0.00", withoutVat="0.00", vat="0.00", toPay="0.00")
    m = order_rows(o)
    assert m.row[COL["status_id"]] == -4 and m.row[COL["price_with_vat"]] == "0.00"
    assert m.children[0][ITEM["item_price_with_vat"]] == "998.00"


def test_guest_order_without_customer_and_email():
    m = order_rows(order(customerGuid=None, email=None))
    assert m.row[COL["customer_guid"]] is None and m.row[COL["email"]] is None


def test_item_types_kept_and_missing_item_id_uses_position():
    o = order(items=3)
    o["items"][1]["itemType"] = "discount-coupon"
    del o["items"][2]["itemId"]
    m = order_rows(o)
    assert [c[ITEM["item_type"]] for c in m.children] == ["product", "discount-coupon", "shipping"]
    assert [c[ITEM["item_id"]] for c in m.children] == [1000, 1001, -3]


@pytest.mark.parametrize(
    "mutate, reason",
    [
        (lambda o: o.pop("code"), "missing key code"),
        (lambda o: o.update(creationTime=None, changeTime=None), "creationTime and changeTime are both null"),
        (lambda o: o.update(creationTime="2026-02-30T10:00:00+0100"), "creationTime: invalid date-time"),
        (lambda o: o.update(changeTime="2026-02-01T10:00:00"), "invalid date-time"),
        (lambda o: o.update(items={"a": 1}), "items: expected a list"),
        (lambda o: o["items"][1].update(itemId=1000), "duplicate itemId"),
        (lambda o: o.update(status="open"), "status: expected an object"),
    ],
)
def test_structural_problems_reject_the_line(mutate, reason):
    o = order()
    mutate(o)
    with pytest.raises(RowError, match=reason):
        order_rows(o)


@pytest.mark.parametrize(
    "field, value, reason",
    [
        ("price", {"withVat": "12,50"}, "price_with_vat: invalid number"),
        ("paid", "yes", "paid: expected true/false"),
        ("status", {"id": "abc"}, "status_id: expected an integer"),
    ],
)
def test_value_validation_names_the_column(field, value, reason):
    o = order()
    o[field] = value if not isinstance(value, dict) else {**(o.get(field) or {}), **value}
    m = order_rows(o)
    with pytest.raises(RowError, match=reason):
        validate(m.row, ORDER_COLUMNS)


def test_ean_as_number_and_objects_in_text_columns_become_text():
    o = order()
    o["items"][0]["ean"] = 8591234567890
    o["items"][0]["name"] = {"cs": "Hrnek"}
    row = validate(order_rows(o).children[0], ITEM_COLUMNS)
    assert row[ITEM["ean"]] == "8591234567890" and row[ITEM["name"]] == '{"cs":"Hrnek"}'


def test_customer_email_comes_from_main_account():
    c = customer()
    c["accounts"].insert(0, {"guid": "x", "email": "second@x.cz", "mainAccount": False})
    row = validate(customer_rows(c).row, CUSTOMER_COLUMNS)
    assert row[3] == "jana.novakova@example.cz"
    assert customer_rows(customer(email=None)).row[3] is None


def test_product_variants_rows():
    m = product("p", variants=["A", "B"])
    assert [v[0] for v in product_rows(m).children] == ["A", "B"]
    bad = product("p")
    bad["variants"][0]["code"] = None
    with pytest.raises(RowError, match="missing key variants"):
        product_rows(bad)


def test_every_generated_order_maps_and_validates():
    """The sandbox generator exercises every quirk at once; all of it must map cleanly."""
    for o in iter_orders(300, seed=3):
        m = order_rows(o)
        validate(m.row, ORDER_COLUMNS)
        for c in m.children:
            validate(c, ITEM_COLUMNS)


def test_a_null_creation_time_files_the_order_under_its_change_time():
    """The official schema allows creationTime null: created_at (and the items' partition) is changeTime."""
    o = order(items=2)
    o["creationTime"] = None
    m = order_rows(o)
    assert m.created == m.changed and m.row[COL["created_at"]] == o["changeTime"]
    assert all(c[ITEM["created_at"]] == o["changeTime"] for c in m.children)
