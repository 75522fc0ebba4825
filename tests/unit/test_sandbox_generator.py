"""The deterministic data generator: same seed -> same bytes, and the quirks of real Shoptet data."""

from __future__ import annotations

import gzip
import re
from collections import Counter
from decimal import Decimal

import orjson
import pytest

from shoptet.sandbox.generator import ShopSpec, iter_customers, iter_orders, iter_products, write_snapshot

DT = re.compile(r"^\d{4}-[01]\d-[0-3]\dT[0-2]\d:[0-5]\d:[0-5]\d\+0[12]00$")
MONEY = re.compile(r"^-?\d+\.\d{2}$")
AMOUNT = re.compile(r"^-?\d+\.\d{3}$")
RATE8 = re.compile(r"^\d+\.\d{8}$")
GUID = re.compile(r"^[0-9a-f]{8}-([0-9a-f]{4}-){3}[0-9a-f]{12}$")

ORDER_REQUIRED = {
    "code",
    "guid",
    "externalCode",
    "creationTime",
    "changeTime",
    "email",
    "phone",
    "clientIPAddress",
    "customerGuid",
    "vatPayer",
    "cashDeskOrder",
    "stockId",
    "addressesEqual",
    "billingMethod",
    "paymentMethod",
    "shipping",
    "adminUrl",
    "status",
    "price",
    "paid",
    "billingAddress",
    "deliveryAddress",
    "items",
}
ITEM_REQUIRED = {
    "productGuid",
    "code",
    "ean",
    "itemType",
    "name",
    "variantName",
    "brand",
    "remark",
    "weight",
    "additionalField",
    "amount",
    "amountUnit",
    "priceRatio",
    "status",
    "itemPrice",
    "unitPrice",
    "purchasePrice",
    "recyclingFee",
    "itemId",
    "warrantyDescription",
    "amountCompleted",
}
CUSTOMER_REQUIRED = {
    "guid",
    "billingAddress",
    "deliveryAddress",
    "creationTime",
    "customerGroup",
    "priceList",
    "remark",
    "priceRatio",
    "birthDate",
    "disabledOrders",
    "accounts",
    "remarks",
    "changeTime",
    "adminUrl",
}
PRODUCT_REQUIRED = {
    "guid",
    "type",
    "brand",
    "visibility",
    "creationTime",
    "changeTime",
    "shortDescription",
    "description",
    "metaDescription",
    "url",
    "defaultCategory",
    "variants",
    "supplier",
    "internalNote",
    "hsCode",
}
VARIANT_REQUIRED = {
    "code",
    "ean",
    "stock",
    "unit",
    "weight",
    "width",
    "height",
    "depth",
    "visible",
    "price",
    "commonPrice",
    "includingVat",
    "vatRate",
    "currencyCode",
    "minStockSupply",
    "actionPrice",
    "manufacturerCode",
    "pluCode",
    "isbn",
    "serialNo",
    "mpn",
    "negativeStockAllowed",
    "amountDecimalPlaces",
}

N = 3000


@pytest.fixture(scope="module")
def orders() -> list[dict]:
    return list(iter_orders(N, seed=7))


@pytest.fixture(scope="module")
def products() -> list[dict]:
    return list(iter_products(ShopSpec.for_orders(N, 7).products, seed=7))


@pytest.mark.parametrize("entity", ["orders", "customers", "products"])
def test_same_seed_same_bytes_different_seed_different(tmp_path, entity):
    a, b, c = tmp_path / "a.jsonl.gz", tmp_path / "b.jsonl.gz", tmp_path / "c.jsonl.gz"
    assert write_snapshot(entity, 120, a, seed=1) == 120
    assert write_snapshot(entity, 120, b, seed=1) == 120
    write_snapshot(entity, 120, c, seed=2)
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()
    raw = gzip.decompress(a.read_bytes())
    assert raw.endswith(b"\n")
    lines = raw.split(b"\n")[:-1]
    assert len(lines) == 120
    assert all(isinstance(orjson.loads(line), dict) for line in lines)  # bare entity, no envelope


def test_snapshot_lines_equal_iterators(tmp_path):
    out = tmp_path / "o.jsonl.gz"
    write_snapshot("orders", 50, out, seed=3, include=["notes"])
    lines = [orjson.loads(x) for x in gzip.decompress(out.read_bytes()).splitlines()]
    assert lines == list(iter_orders(50, seed=3, include=["notes"]))
    assert all("notes" in o for o in lines)


def test_order_shape_and_formats(orders):
    for o in orders[:500]:
        assert ORDER_REQUIRED <= o.keys()
        assert "notes" not in o and "shippingDetails" not in o  # include-only
        assert DT.match(o["creationTime"])
        assert o["changeTime"] is None or DT.match(o["changeTime"])
        assert RATE8.match(o["price"]["exchangeRate"])
        for key in ("vat", "toPay", "withoutVat", "withVat"):
            assert MONEY.match(o["price"][key])
        assert isinstance(o["items"], list) and 3 <= len(o["items"]) <= 9
        types = Counter(it["itemType"] for it in o["items"])
        assert types["shipping"] == 1 and types["billing"] == 1 and types["product"] >= 1
        for it in o["items"]:
            assert ITEM_REQUIRED <= it.keys()
            assert isinstance(it["itemId"], int)
            assert re.match(r"^\d+\.\d{4}$", it["priceRatio"])
            assert AMOUNT.match(it["weight"])
            for p in ("itemPrice", "unitPrice"):
                assert MONEY.match(it[p]["withVat"]) and MONEY.match(it[p]["withoutVat"])
                assert re.match(r"^\d+\.\d{2}$", it[p]["vatRate"])
            # itemPrice is the line total = unit x amount
            amount = Decimal(str(it["amount"]))
            expected = (Decimal(it["unitPrice"]["withVat"]) * amount).quantize(Decimal("0.01"))
            assert abs(Decimal(it["itemPrice"]["withVat"]) - expected) <= Decimal("0.01")


def test_order_sizes_dates_and_codes(orders):
    sizes = [len(orjson.dumps(o)) for o in orders]
    assert 2500 < sum(sizes) / len(sizes) < 7000
    years = Counter(o["creationTime"][:4] for o in orders)
    assert min(years) <= "2022" and max(years) == "2026"
    quarters = {(o["creationTime"][:4], (int(o["creationTime"][5:7]) - 1) // 3) for o in orders}
    assert len(quarters) >= 15
    assert all(re.match(r"^20\d{8}$", o["code"]) and o["code"][:4] == o["creationTime"][:4] for o in orders)
    assert len({o["code"] for o in orders}) == len(orders)


def test_order_quirks_present(orders):
    n = len(orders)
    guests = sum(o["customerGuid"] is None for o in orders)
    assert 0.28 < guests / n < 0.39
    cancelled = [o for o in orders if o["status"]["id"] == -4]
    assert cancelled and cancelled[0]["status"]["name"] == "Stornována"
    for o in cancelled:
        assert {o["price"][k] for k in ("vat", "toPay", "withoutVat", "withVat")} == {"0.00"}
    assert any(it["itemPrice"]["withVat"] != "0.00" for o in cancelled for it in o["items"])
    numeric = [o for o in orders if any(not isinstance(it["amount"], str) for it in o["items"])]
    assert 0.02 < len(numeric) / n < 0.09
    assert all(isinstance(it["amount"], float) for o in numeric for it in o["items"])
    eur = [o for o in orders if o["price"]["currencyCode"] == "EUR"]
    assert 0.06 < len(eur) / n < 0.15
    assert all(23 < float(o["price"]["exchangeRate"]) < 26 for o in eur)
    assert all(o["price"]["exchangeRate"] == "1.00000000" for o in orders if o["price"]["currencyCode"] == "CZK")
    assert any(o["email"] is None for o in orders)
    assert any(o["paid"] is None for o in orders)
    assert any(o["vatPayer"] is None for o in orders)
    assert any(o["changeTime"] is None for o in orders)
    null_guid = [i for i, o in enumerate(orders) if o["guid"] is None]
    assert null_guid and max(null_guid) < n * 0.05  # only the oldest orders
    assert all(GUID.match(o["guid"]) for o in orders if o["guid"])
    item_types = {it["itemType"] for o in orders for it in o["items"]}
    assert item_types >= {
        "product",
        "shipping",
        "billing",
        "discount-coupon",
        "volume-discount",
        "gift",
        "service",
        "product-set",
        "deposit",
        "generic-item",
        "gift-certificate",
        "bazar",
    }
    assert any(c["itemType"] == "product-set-item" for o in orders for c in o["completion"])


def test_product_lines_reference_generated_variants(orders, products):
    variants = {v["code"]: p["guid"] for p in products for v in p["variants"]}
    assert len(variants) == sum(len(p["variants"]) for p in products)  # codes unique in the shop
    for o in orders[:800]:
        for it in o["items"]:
            if it["itemType"] in ("product", "bazar", "service", "product-set", "gift"):
                assert variants[it["code"]] == it["productGuid"]


def test_customers_and_products_shape():
    customers = list(iter_customers(400, seed=5))
    for c in customers:
        assert CUSTOMER_REQUIRED <= c.keys()
        assert "email" not in c  # lives in accounts[] (reference §7.2)
        assert isinstance(c["deliveryAddress"], list)
        assert all(a["email"] for a in c["accounts"])
        assert re.match(r"^\d\.\d{4}$", c["priceRatio"])
    assert any(not c["accounts"] for c in customers) and any(c["accounts"] for c in customers)
    assert any(c["customerGroup"] for c in customers)
    products = list(iter_products(100, seed=5))
    codes = [v["code"] for p in products for v in p["variants"]]
    assert len(codes) == len(set(codes))
    assert any(len(p["variants"]) > 1 for p in products)
    for p in products:
        assert PRODUCT_REQUIRED <= p.keys()
        assert "images" not in p and "setItems" not in p
        for v in p["variants"]:
            assert VARIANT_REQUIRED <= v.keys()
            assert "name" not in v  # needs include=variantParameters
            assert re.match(r"^\d{1,4}\.\d$", v["width"])
            assert v["price"] is None or MONEY.match(v["price"])
    with_inc = next(iter_products(20, seed=5, include=["images", "variantParameters", "setItems"]))
    assert "images" in with_inc and "name" in with_inc["variants"][0]


def test_orders_reference_customers_of_the_same_shop():
    spec = ShopSpec.for_orders(300, 9)
    guids = {c["guid"] for c in iter_customers(spec.customers, spec=spec)}
    refs = {o["customerGuid"] for o in iter_orders(300, spec=spec) if o["customerGuid"]}
    assert refs and refs <= guids
