"""The msgspec order decoder gives exactly what order_rows gives, or hands the line back (no database)."""

from __future__ import annotations

import orjson
import pytest

from db.mapping import RowError, order_rows
from db.mapping_fast import NotFast, order_rows_fast
from shoptet.sandbox.generator import iter_orders
from tests.factories import order


def same(o: dict) -> None:
    slow, fast = order_rows(o), order_rows_fast(orjson.dumps(o))
    assert (fast.key, fast.changed, fast.created) == (slow.key, slow.changed, slow.created)
    assert fast.row == slow.row and fast.children == slow.children
    # equal is not enough: 1 == 1.0 == True, and COPY writes each type differently
    assert [type(v) for v in fast.row] == [type(v) for v in slow.row]
    assert [[type(v) for v in c] for c in fast.children] == [[type(v) for v in c] for c in slow.children]


def test_every_generated_order_decodes_as_order_rows_maps_it():
    for o in iter_orders(2000, seed=11):
        same(o)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda o: o["items"][0].update(amount=2.0, ean=8591234567890, itemId=None),
        lambda o: o["items"][0].update(itemId="2001"),  # an itemId sent as a digit string
        lambda o: o.update(billingAddress=None, deliveryAddress={}, price=None, status=None, items=None),
        lambda o: o.update(paid=None, vatPayer=None, changeTime=None),
        lambda o: [o.pop(k) for k in ("guid", "email", "customerGuid", "shipping", "items")],
        lambda o: o["items"][0].update(itemPrice={"withVat": "1.00"}, unitPrice=None, status=None),
        lambda o: o.update(code=2026000123, extra={"nested": [1, 2, {"x": None}]}),
        lambda o: o["items"][0].update(name={"cs": "Hrnek"}),  # an object in a text column: passed on as is
    ],
)
def test_quirks_decode_like_order_rows(mutate):
    o = order()
    mutate(o)
    same(o)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda o: o.update(status="open"),
        lambda o: o.update(items={"a": 1}),
        lambda o: o["items"].append("not an object"),
        lambda o: o.update(billingAddress=[]),
        lambda o: o["items"][0].update(itemPrice="998.00"),
    ],
)
def test_undocumented_shapes_are_handed_back(mutate):
    o = order()
    mutate(o)
    with pytest.raises(NotFast):
        order_rows_fast(orjson.dumps(o))


def test_not_an_object_or_not_json_is_handed_back():
    for line in (b"[1, 2]", b"{broken", b'"text"'):
        with pytest.raises(NotFast):
            order_rows_fast(line)


@pytest.mark.parametrize(
    "mutate, reason",
    [
        (lambda o: o.pop("code"), "missing key code"),
        (lambda o: o.update(creationTime=None, changeTime=None), "creationTime and changeTime are both null"),
        (lambda o: o.update(changeTime="2026-02-01T10:00:00"), "invalid date-time"),
        (lambda o: o["items"][1].update(itemId=1000), "duplicate itemId"),
    ],
)
def test_line_errors_read_as_in_order_rows(mutate, reason):
    o = order()
    mutate(o)
    with pytest.raises(RowError, match=reason):
        order_rows(o)
    with pytest.raises(RowError, match=reason):
        order_rows_fast(orjson.dumps(o))
