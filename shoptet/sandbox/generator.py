"""Deterministic, streaming generator of Shoptet orders, customers and products.

Same seed and sizes -> same bytes: all randomness comes from `random.Random` instances seeded
from the shop seed, and all dates hang off `ShopSpec.reference` (never the wall clock).

Entities come out in the *full* internal form, i.e. with include-only sections present
(`notes`, `shippingDetails`, product `images`, ...); `render.py` turns that into exactly what
the API serves for a given `include`. The public `iter_*` functions and `write_snapshot` yield
rendered entities (no includes unless asked).

Customers and products are generated per index from their own seeded RNG, so an order can
reference customer #i or product #k without anything being held in memory except the
(small) product catalogue.
"""

from __future__ import annotations

import gzip
import os
import random
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import NamedTuple, TypeVar

import orjson

from . import vocab as V
from .formats import REFERENCE, fmt_date, fmt_dt

DAY = 86400
_T = TypeVar("_T")
YEAR = int(365.25 * DAY)

ENTITIES = ("orders", "customers", "products")

# Rates of the quirks every consumer must survive (reference §9).
GUEST_RATE = 1 / 3
NO_EMAIL_RATE = 0.04
NULL_PAID_RATE = 0.01
NULL_VATPAYER_RATE = 0.01
NULL_CHANGETIME_RATE = 0.005
NULL_CASHDESK_RATE = 0.003
OLD_NULL_GUID_SHARE = 0.03  # the oldest 3 % of orders ...
OLD_NULL_GUID_RATE = 0.5  # ... half of which have guid null


@dataclass(frozen=True)
class ShopSpec:
    """Sizes and anchor of one generated shop; the sandbox and `write_snapshot` share it."""

    orders: int
    customers: int
    products: int
    seed: int = 42
    reference: datetime = REFERENCE
    years: float = 4.0
    amount_as_number_rate: float = 0.05

    @classmethod
    def for_orders(cls, orders: int, seed: int = 42, **kw: object) -> ShopSpec:
        return cls(orders=orders, customers=max(10, orders // 3), products=max(50, orders // 40), seed=seed, **kw)  # type: ignore[arg-type]

    @property
    def ref_epoch(self) -> int:
        return int(self.reference.timestamp())


# ---------------------------------------------------------------- small helpers


def _guid(rng: random.Random) -> str:
    """Time-based-looking (v1) lowercase GUID."""
    h = f"{rng.getrandbits(128):032x}"
    return f"{h[:8]}-{h[8:12]}-1{h[13:16]}-{'89ab'[int(h[16], 16) & 3]}{h[17:20]}-{h[20:]}"


def _ean(rng: random.Random) -> str:
    body = f"859{rng.randrange(10**9):09d}"
    s = sum(int(c) * (3 if i % 2 else 1) for i, c in enumerate(body))
    return body + str((10 - s % 10) % 10)


def _cum_pick(r: float, cum: list[float]) -> int:
    return bisect_left(cum, r)


def _split(with_vat: int, rate: int) -> tuple[int, int]:
    """(withoutVat, vat) in cents for a VAT-inclusive amount; half-up on the magnitude."""
    a = abs(with_vat)
    wo = (a * 200 + 100 + rate) // (200 + 2 * rate)
    if with_vat < 0:
        wo = -wo
    return wo, with_vat - wo


def _m(c: int) -> str:
    return f"{c / 100:.2f}"


def _price(with_vat: int, rate: int, rate_s: str) -> dict:
    wo, vat = _split(with_vat, rate)
    return {
        "withVat": f"{with_vat / 100:.2f}",
        "withoutVat": f"{wo / 100:.2f}",
        "vat": f"{vat / 100:.2f}",
        "vatRate": rate_s,
    }


_RATE_S = {21: "21.00", 12: "12.00", 15: "15.00", 10: "10.00", 0: "0.00"}


# ---------------------------------------------------------------- people


class Person(NamedTuple):
    full_name: str
    email: str
    phone: str
    country: str
    city: str
    zip: str
    street: str
    house: str
    company: str | None
    company_id: str | None
    vat_id: str | None


def _person(rng: random.Random, tag: int | None) -> Person:
    r = rng.random
    country = V.COUNTRY_CUM[_cum_pick(r(), [c for _, c in V.COUNTRY_CUM])][0]
    _, phone_prefix, _, cities, streets = V.COUNTRIES[country]
    n = rng.randrange(20)
    m = rng.randrange(20)
    if r() < 0.5:
        first, last, fa, la = V.FEMALE_FIRST[n], V.FEMALE_LAST[m], V.FEMALE_FIRST_A[n], V.FEMALE_LAST_A[m]
    else:
        first, last, fa, la = V.MALE_FIRST[n], V.MALE_LAST[m], V.MALE_FIRST_A[n], V.MALE_LAST_A[m]
    num = tag if tag is not None else rng.randrange(100000, 999999)
    email = f"{fa}.{la}{num}@{V.MAIL_DOMAINS[rng.randrange(len(V.MAIL_DOMAINS))]}"
    city, zip_ = cities[rng.randrange(len(cities))]
    street = streets[rng.randrange(len(streets))]
    phone = f"{phone_prefix}{rng.randrange(600000000, 799999999)}"
    if r() < 0.12:
        company = f"{V.COMPANY_WORDS[rng.randrange(10)]} {last.split()[0]} {V.COMPANY_FORMS[rng.randrange(4)]}"
        company_id = f"{rng.randrange(10**7, 10**8)}"
        vat_id = f"{country}{company_id}" if r() < 0.8 else None
    else:
        company = company_id = vat_id = None
    return Person(
        f"{first} {last}",
        email,
        phone,
        country,
        city,
        zip_,
        street,
        str(rng.randrange(1, 250)),
        company,
        company_id,
        vat_id,
    )


def _billing_address(p: Person, vat_status: str | None = None) -> dict:
    """The delivery address's fields, then the company's identifiers (in the API's key order)."""
    return {
        **_delivery_address(p),
        "companyId": p.company_id,
        "vatId": p.vat_id,
        "vatIdValidationStatus": vat_status,
        "taxId": None,
    }


def _delivery_address(p: Person) -> dict:
    return {
        "company": p.company,
        "fullName": p.full_name,
        "street": p.street,
        "houseNumber": p.house,
        "city": p.city,
        "district": None,
        "additional": None,
        "zip": p.zip,
        "countryCode": p.country,
        "regionName": None,
        "regionShortcut": None,
    }


# ---------------------------------------------------------------- customers


def _customer_rng(seed: int, i: int) -> random.Random:
    return random.Random(f"{seed}/customer/{i}")


def customer_core(seed: int, i: int) -> tuple[str, Person, random.Random]:
    """GUID and person of customer #i (what an order needs), plus the RNG to continue with."""
    rng = _customer_rng(seed, i)
    guid = _guid(rng)
    return guid, _person(rng, i), rng


def build_customer(spec: ShopSpec, i: int, *, now: int | None = None) -> tuple[dict, int, int | None]:
    """Customer #i in full form, with (creation, change) epochs. `now` forces a fresh customer."""
    guid, p, rng = customer_core(spec.seed, i)
    r = rng.random
    ref = spec.ref_epoch if now is None else now
    created = ref - int(rng.uniform(0.01, spec.years + 0.5) * YEAR) if now is None else now
    changed: int | None
    if now is not None:
        changed = now
    elif r() < 0.06:
        changed = max(created, ref - rng.randrange(30 * DAY))
    else:
        changed = created + int((ref - created) * r() * r())
    if r() < 0.003:
        changed = None
    accounts = []
    x = r()
    if x >= 0.2:
        accounts.append(
            {
                "guid": _guid(rng),
                "fullName": p.full_name,
                "email": p.email,
                "phone": p.phone,
                "mainAccount": True,
                "authorized": True,
                "emailVerified": r() < 0.85,
            }
        )
        if x > 0.96:
            accounts.append(
                {
                    "guid": _guid(rng),
                    "fullName": None,
                    "email": f"obj.{p.email}",
                    "phone": None,
                    "mainAccount": False,
                    "authorized": r() < 0.5,
                    "emailVerified": False,
                }
            )
    delivery = []
    nd = 0 if r() < 0.3 else (1 if r() < 0.85 else 2)
    for d in range(nd):
        addr = {"guid": _guid(rng), **_delivery_address(p), "isDefault": d == 0}
        if d:
            addr["street"] = V.COUNTRIES[p.country][4][rng.randrange(len(V.COUNTRIES[p.country][4]))]
        delivery.append(addr)
    group = V.CUSTOMER_GROUPS[0] if x >= 0.2 else None
    if group and r() < 0.08:
        group = V.CUSTOMER_GROUPS[1 + rng.randrange(2)]
    price_list = V.PRICE_LISTS[1] if group and group["id"] == 3 else None
    customer = {
        "guid": guid,
        "creationTime": fmt_dt(created),
        "changeTime": fmt_dt(changed) if changed is not None else None,
        "billingAddress": _billing_address(p, "verified" if p.vat_id else None),
        "deliveryAddress": delivery,
        "customerGroup": dict(group) if group else None,
        "priceList": dict(price_list) if price_list else None,
        "remark": "Stálý zákazník" if r() < 0.05 else None,
        "priceRatio": "0.9500" if group and group["id"] == 2 else "1.0000",
        "birthDate": f"{rng.randrange(1950, 2005)}-{rng.randrange(1, 13):02d}-{rng.randrange(1, 29):02d}"
        if r() < 0.15
        else None,
        "disabledOrders": r() < 0.01,
        "accounts": accounts,
        "remarks": [],
        "adminUrl": f"{V.SHOP_URL}/admin/zakaznici-detail?id={i + 1}",
    }
    return customer, created, changed


# ---------------------------------------------------------------- products


def product_type(k: int) -> str:
    m = k % 25
    return {7: "bazar", 13: "product-set", 19: "service"}.get(m, "product")


def variant_code(k: int, v: int) -> str:
    return f"P{k:05d}-{v + 1}"


def _product_guid(seed: int, k: int) -> str:
    return _guid(random.Random(f"{seed}/product/{k}"))


def _set_components(spec: ShopSpec, k: int) -> list[tuple[int, int]]:
    """(product index, amount) of the plain products making up product-set #k."""
    out: list[tuple[int, int]] = []
    j = k
    for m in range(2 + k % 2):
        j = (j * 7 + 13 * m + 1) % spec.products
        while product_type(j) != "product" or j == k or any(j == x for x, _ in out):
            j = (j + 1) % spec.products
        out.append((j, 1 + (m == 0 and k % 3 == 0)))
    return out


def build_product(spec: ShopSpec, k: int, *, now: int | None = None) -> tuple[dict, int, int | None]:
    """Product #k in full form (include-only sections present), with (creation, change) epochs."""
    rng = random.Random(f"{spec.seed}/product/{k}")
    r = rng.random
    guid = _guid(rng)
    ptype = product_type(k)
    ref = spec.ref_epoch if now is None else now
    created = ref - int(rng.uniform(0.05, spec.years + 0.5) * YEAR) if now is None else now
    changed: int | None
    if now is not None:
        changed = now
    elif r() < 0.08:
        changed = max(created, ref - rng.randrange(30 * DAY))
    else:
        changed = created + int((ref - created) * r())
    noun = V.NOUNS[rng.randrange(len(V.NOUNS))]
    adjective = V.ADJECTIVES[rng.randrange(len(V.ADJECTIVES))]
    model = V.MODELS[rng.randrange(len(V.MODELS))]
    vat = 12 if noun == "Kniha" else 21
    cat = 8 if noun == "Kniha" else rng.randrange(8)
    name = f"{noun} {adjective} {model}"
    if ptype == "service":
        name, cat, vat = ["Montáž a instalace", "Prodloužená záruka 2 roky", "Dárkové balení"][k % 3], 9, 21
    elif ptype == "bazar":
        name = f"Bazar - {name}"
    elif ptype == "product-set":
        name, cat = f"Sada {noun.lower()} {model}", 7
    index_name = f"{V.ascii_slug(name)}-{k + 1}"
    brand = V.BRANDS[rng.randrange(len(V.BRANDS))] if r() < 0.9 else None
    supplier = V.SUPPLIERS[rng.randrange(2)] if r() < 0.3 else None
    nvar = 1 if ptype != "product" or r() < 0.6 else rng.randrange(2, 6)
    pname, pvalues = V.COLOR_PARAM if r() < 0.6 else V.SIZE_PARAM
    base = rng.randrange(5, 400) * 1000 - 100
    if ptype == "service":
        base = rng.randrange(2, 30) * 5000
    unit, decimals = ("m", 1) if noun == "Ubrus" and r() < 0.5 else ("ks", 0)
    variants = []
    for v in range(nvar):
        price = base + v * (base // 2000) * 100
        stock = None if ptype == "service" or r() < 0.04 else (0 if r() < 0.15 else rng.randrange(1, 80) * 1000)
        if stock and decimals:
            stock += rng.randrange(10) * 100
        value = pvalues[(k + v) % len(pvalues)]
        action = None
        if r() < 0.1:
            start = ref - rng.randrange(60) * DAY
            action = {
                "price": _m(price * 9 // 1000 * 100),
                "fromDate": fmt_date(start),
                "toDate": fmt_date(start + 30 * DAY) if r() < 0.8 else None,
            }
        variants.append(
            {
                "code": variant_code(k, v),
                "ean": _ean(rng) if r() < 0.92 else None,
                "stock": f"{stock / 1000:.3f}" if stock is not None else None,
                "unit": unit,
                "weight": f"{rng.randrange(50, 3000) / 1000:.3f}",
                "width": f"{rng.randrange(50, 600) / 10:.1f}",
                "height": f"{rng.randrange(50, 600) / 10:.1f}",
                "depth": f"{rng.randrange(50, 600) / 10:.1f}",
                "visible": r() < 0.95,
                "price": _m(price),
                "commonPrice": _m(price * 11 // 1000 * 100) if r() < 0.3 else None,
                "includingVat": True,
                "vatRate": _RATE_S[vat],
                "currencyCode": "CZK",
                "minStockSupply": "2.000" if r() < 0.2 else None,
                "actionPrice": action,
                "manufacturerCode": f"M-{rng.randrange(10**6):06d}" if r() < 0.3 else None,
                "pluCode": None,
                "isbn": f"978-80-{rng.randrange(10**4):04d}-{rng.randrange(1000):03d}-{rng.randrange(10)}"
                if noun == "Kniha"
                else None,
                "serialNo": None,
                "mpn": f"MPN{rng.randrange(10**5):05d}" if r() < 0.2 else None,
                "negativeStockAllowed": "no-global" if r() < 0.8 else ("yes-global" if r() < 0.5 else "yes"),
                "amountDecimalPlaces": decimals,
                "availability": V.AVAILABILITIES[rng.randrange(3)] if stock else None,
                "availabilityWhenSoldOut": V.SOLD_OUT,
                # include=variantParameters only:
                "name": f"{name} {value}" if nvar > 1 else name,
                "parameters": [
                    {
                        "paramName": pname.lower(),
                        "paramIndex": pname.lower(),
                        "paramValue": value,
                        "displayName": pname,
                        "rawValue": value,
                        "color": None,
                        "image": None,
                        "valuePriority": (k + v) % len(pvalues),
                    }
                ]
                if nvar > 1
                else [],
            }
        )
    cat_guid, cat_name, parent = V.CATEGORIES[cat]
    categories = [
        {
            "guid": cat_guid,
            "name": cat_name,
            "parentGuid": V.CATEGORIES[parent][0] if parent is not None else None,
        }
    ]
    if parent is not None:
        pg, pn, _ = V.CATEGORIES[parent]
        categories.append({"guid": pg, "name": pn, "parentGuid": None})
    images = [
        {
            "name": f"{k + 1}_{m}.jpg",
            "seoName": f"{index_name}-{m}.jpg",
            "cdnName": f"{k + 1}_{m}.jpg",
            "signedCdnNames": [],
            "priority": m,
            "description": None,
            "changeTime": fmt_dt(created),
        }
        for m in range(1, 1 + rng.randrange(4))
    ]
    flags = []
    if r() < 0.2:
        code, title = V.FLAGS[rng.randrange(3)]
        flags.append({"code": code, "title": title, "dateFrom": None, "dateTo": None})
    set_items = []
    if ptype == "product-set":
        set_items = [
            {"guid": _product_guid(spec.seed, j), "code": variant_code(j, 0), "amount": f"{a:.3f}"}
            for j, a in _set_components(spec, k)
        ]
    product = {
        "guid": guid,
        "type": ptype,
        "name": name,
        "indexName": index_name,
        "brand": {"code": brand[0], "name": brand[1]} if brand else None,
        "supplier": {"guid": supplier[0], "name": supplier[1]} if supplier else None,
        "visibility": V.VISIBILITY_CUM[_cum_pick(r(), [c for _, c in V.VISIBILITY_CUM])][0],
        "creationTime": fmt_dt(created),
        "changeTime": fmt_dt(changed) if changed is not None else None,
        "shortDescription": f"{name}.",
        "description": f"<p>{name} – kvalitní zboží z naší nabídky.</p>",
        "metaDescription": None if r() < 0.6 else f"{name} za skvělou cenu",
        "url": f"{V.SHOP_URL}/{index_name}/",
        "conditionGrade": "B" if ptype == "bazar" else None,
        "conditionDescription": "Lehce použité, drobné oděrky" if ptype == "bazar" else None,
        "internalNote": None,
        "hsCode": "69120010" if r() < 0.1 else None,
        "defaultCategory": {"guid": cat_guid, "name": cat_name, "visible": True},
        "isVariant": nvar > 1,
        "variants": variants,
        # include-only sections (see render.PRODUCT_INCLUDES):
        "images": images,
        "categories": categories,
        "flags": flags,
        "setItems": set_items,
    }
    return product, created, changed


class CatalogItem(NamedTuple):
    product_guid: str
    code: str
    ean: str | None
    name: str
    variant_name: str | None
    brand: str | None
    weight_g: int
    price_c: int
    vat: int
    product_type: str
    unit: str
    decimals: int


@dataclass
class Catalog:
    """What orders need from products: sellable variants by product type, and set components."""

    by_type: dict[str, list[CatalogItem]] = field(default_factory=dict)
    set_parts: dict[str, list[tuple[CatalogItem, int]]] = field(default_factory=dict)

    @classmethod
    def from_products(cls, spec: ShopSpec, products: Iterable[dict]) -> Catalog:
        cat = cls()
        first_variant: dict[int, CatalogItem] = {}
        for k, p in enumerate(products):
            for v, var in enumerate(p["variants"]):
                item = CatalogItem(
                    p["guid"],
                    var["code"],
                    var["ean"],
                    p["name"],
                    f"{var['parameters'][0]['displayName']}: {var['parameters'][0]['rawValue']}"
                    if var["parameters"]
                    else None,
                    p["brand"]["name"] if p["brand"] else None,
                    round(float(var["weight"]) * 1000),
                    round(float(var["price"]) * 100),
                    int(float(var["vatRate"])),
                    p["type"],
                    var["unit"],
                    var["amountDecimalPlaces"],
                )
                cat.by_type.setdefault(p["type"], []).append(item)
                if v == 0:
                    first_variant[k] = item
        for k in range(spec.products):
            if product_type(k) == "product-set" and k in first_variant:
                cat.set_parts[first_variant[k].code] = [
                    (first_variant[j], a) for j, a in _set_components(spec, k) if j in first_variant
                ]
        return cat


def iter_products_full(spec: ShopSpec) -> Iterator[tuple[dict, int, int | None]]:
    for k in range(spec.products):
        yield build_product(spec, k)


# ---------------------------------------------------------------- orders

_EXTRA_TYPES = (
    "discount-coupon",
    "volume-discount",
    "gift",
    "service",
    "product-set",
    "deposit",
    "generic-item",
    "gift-certificate",
    "bazar",
)
_EXTRA_RATES = (0.07, 0.03, 0.05, 0.04, 0.04, 0.03, 0.02, 0.02, 0.03)


class _OrderLines:
    """The item rows of one order as they are added, with the running totals in whole cents."""

    def __init__(self, idx: int, status: int, *, as_number: bool) -> None:
        self.items: list[dict] = []
        self.completion: list[dict] = []
        self.item_id = 1000 + idx * 12
        self.products_sum = 0  # the lines of catalogue items
        self.tot_with = self.tot_wo = 0
        self.status = status
        self.as_number = as_number
        self.done = status == -3

    def amount(self, milli: int) -> str | float:
        return milli / 1000 if self.as_number else f"{milli / 1000:.3f}"

    def add(
        self,
        item_type: str,
        ci: CatalogItem | None,
        name: str,
        unit_c: int,
        milli: int,
        vat: int,
        ratio: str = "1.0000",
        code: str | None = None,
        unit: str | None = None,
    ) -> dict:
        self.item_id += 1
        line_c = (abs(unit_c) * milli + 500) // 1000 * (1 if unit_c >= 0 else -1)
        rate_s = _RATE_S[vat]
        line_wo, line_vat = _split(line_c, vat)
        self.tot_with += line_c
        self.tot_wo += line_wo
        a = self.amount(milli)
        item = {
            "itemId": self.item_id,
            "itemType": item_type,
            "productGuid": ci.product_guid if ci else None,
            "code": ci.code if ci else code,
            "ean": ci.ean if ci else None,
            "productType": ci.product_type if ci else None,
            "name": ci.name if ci else name,
            "variantName": ci.variant_name if ci else None,
            "brand": ci.brand if ci else None,
            "remark": None,
            "weight": f"{(ci.weight_g * milli // 1000 if ci else 0) / 1000:.3f}",
            "additionalField": None,
            "amount": a,
            "amountUnit": (ci.unit if ci else unit),
            "amountCompleted": (a if self.done else ("0.000" if not self.as_number else 0.0)),
            "priceRatio": ratio,
            "status": {"id": self.status, "name": V.ORDER_STATUSES[self.status]},
            "itemPrice": {
                "withVat": f"{line_c / 100:.2f}",
                "withoutVat": f"{line_wo / 100:.2f}",
                "vat": f"{line_vat / 100:.2f}",
                "vatRate": rate_s,
            },
            "unitPrice": _price(unit_c, vat, rate_s),
            "purchasePrice": None,
            "recyclingFee": None,
            "warrantyDescription": "24 měsíců" if ci and item_type == "product" else None,
        }
        self.items.append(item)
        if ci is not None:
            self.products_sum += line_c
            self.completion.append(
                {
                    "productGuid": ci.product_guid,
                    "code": ci.code,
                    "itemType": item_type,
                    "name": ci.name,
                    "variantName": ci.variant_name,
                    "amount": a,
                    "amountUnit": ci.unit,
                    "itemId": self.item_id,
                    "amountCompleted": item["amountCompleted"],
                }
            )
        return item

    def add_set_parts(self, parts: list[tuple[CatalogItem, int]], parent_item_id: int) -> None:
        """A product set's components: completion rows only, no item rows of their own."""
        for part, a in parts:
            self.completion.append(
                {
                    "productGuid": part.product_guid,
                    "code": part.code,
                    "itemType": "product-set-item",
                    "name": part.name,
                    "variantName": part.variant_name,
                    "amount": self.amount(a * 1000),
                    "amountUnit": part.unit,
                    "itemId": None,
                    "amountCompleted": self.amount(a * 1000 if self.done else 0),
                    "parentProductSetItemId": parent_item_id,
                }
            )


# Statuses of orders younger than three weeks: (upper bound of the draw, status); -4 above the last.
_RECENT_STATUSES = ((0.3, -1), (0.55, -2), (0.65, 5), (0.8, 6), (0.93, -3))


def _order_status(rng: random.Random, age: int) -> int:
    x = rng.random()
    if age > 21 * DAY:
        return -3 if x < 0.92 else (-4 if x < 0.99 else 6)
    return next((status for bound, status in _RECENT_STATUSES if x < bound), -4)


def _nullable(rng: random.Random, value: _T, rate: float) -> _T | None:
    """``value``, or None for the share ``rate`` of orders (a draw made after the value's own)."""
    return None if rng.random() < rate else value


def _shipping_and_payment(rng: random.Random) -> tuple[int, int]:
    ship_i = _cum_pick(rng.random(), V.SHIPPING_CUM)
    pay_i = _cum_pick(rng.random(), V.PAYMENT_CUM)
    if ship_i == 4 and pay_i == 1:  # no cash on delivery for pick-up
        pay_i = 3
    return ship_i, pay_i


def _from_czk(czk_c: int, rate_milli: int) -> int:
    """Whole cents of CZK in the order's currency, ``rate_milli`` CZK per 1000 units (1000: CZK itself)."""
    return (czk_c * 1000 + rate_milli // 2) // rate_milli


def _change_time(rng: random.Random, created: int, cap: int) -> int | None:
    if rng.random() < 0.03:
        changed = max(created, cap - rng.randrange(30 * DAY))
    else:
        delta = rng.randrange(60, 7 * DAY)
        # recent orders: spread the change over the time left, don't pile them up at `cap`
        changed = created + delta if created + delta < cap else created + int((cap - created) * rng.random())
    return _nullable(rng, changed, NULL_CHANGETIME_RATE)


def _delivery(rng: random.Random, p: Person, ship_i: int, equal: bool) -> dict | None:
    if ship_i == 4:  # pick-up
        return None
    delivery = _delivery_address(p)
    if not equal:
        streets = V.COUNTRIES[p.country][4]
        delivery["street"] = streets[rng.randrange(len(streets))]
        delivery["houseNumber"] = str(rng.randrange(1, 250))
    return delivery


def _shipping_details(rng: random.Random, p: Person, company: str) -> dict:
    return {
        "branchId": str(rng.randrange(1000, 30000)),
        "shippingCompanyCode": company,
        "shippingServiceCode": None,
        "name": f"Z-BOX {p.city}",
        "note": None,
        "place": p.city,
        "street": p.street,
        "city": p.city,
        "zipCode": p.zip,
        "countryCode": p.country,
        "link": None,
        "latitude": None,
        "longitude": None,
        "carrierId": None,
    }


class OrderFactory:
    """Builds realistic orders referencing the shop's customers and catalogue.

    Every draw comes from the one ``rng`` in a fixed order: the same seed gives the same orders, so a
    change that adds, drops or reorders a draw changes every order after it.
    """

    def __init__(self, spec: ShopSpec, catalog: Catalog) -> None:
        self.spec = spec
        self.catalog = catalog
        self.plain = catalog.by_type.get("product", [])
        if not self.plain:
            raise ValueError("the catalogue has no plain products")

    def build(self, rng: random.Random, idx: int, created: int, code: str, cap: int) -> tuple[dict, int, int | None]:
        """Order #idx created at `created`; `cap` bounds its changeTime (the shop's "now")."""
        r = rng.random
        customer_guid, p = self._buyer(rng)
        currency, _, language, _, _ = V.COUNTRIES[p.country]
        eur = currency == "EUR"
        # CZK per EUR drifts over time; 3 decimals like the CNB fixing
        rate_milli = 24000 + (created // (7 * DAY)) % 1500 + rng.randrange(-50, 50) if eur else 1000
        status = _order_status(rng, cap - created)
        cancelled = status == -4
        cash_desk = _nullable(rng, r() < 0.02, NULL_CASHDESK_RATE)
        lines = _OrderLines(idx, status, as_number=r() < self.spec.amount_as_number_rate)
        ship_i, pay_i = _shipping_and_payment(rng)
        ship_guid, ship_name, ship_price, ship_company = V.SHIPPINGS[ship_i]
        pay_guid, pay_name, bill_id, bill_name, pay_price = V.PAYMENTS[pay_i]

        def conv(czk_c: int) -> int:
            return _from_czk(czk_c, rate_milli)

        self._add_product_lines(rng, lines, conv)
        self._add_extra_lines(rng, lines, conv)
        free_shipping = lines.products_sum >= conv(150000)
        shipping = lines.add("shipping", None, ship_name, 0 if free_shipping else conv(ship_price), 1000, 21)
        billing = lines.add("billing", None, pay_name, conv(pay_price), 1000, 21)
        if cancelled:
            h_with = h_wo = h_vat = "0.00"
        else:
            h_with, h_wo, h_vat = _m(lines.tot_with), _m(lines.tot_wo), _m(lines.tot_with - lines.tot_wo)

        changed = _change_time(rng, created, cap)
        paid = _nullable(rng, lines.done or pay_i == 2 and not cancelled, NULL_PAID_RATE)
        vat_payer = _nullable(rng, r() >= 0.02, NULL_VATPAYER_RATE)
        guid = self._order_guid(rng, idx)
        email: str | None = p.email
        if cash_desk or (customer_guid is None and r() < NO_EMAIL_RATE * 3):
            email = None
        equal = ship_i != 4 and r() < 0.88
        delivery = _delivery(rng, p, ship_i, equal)
        shipped = lines.done or status == 6
        tracking = f"DR{rng.randrange(10**9):09d}CZ" if shipped and ship_i in (0, 2, 3) else None
        ip = (
            None if cash_desk else f"{rng.randrange(31, 223)}.{rng.randrange(256)}.{rng.randrange(256)}.{idx % 254 + 1}"
        )
        remark = V.CUSTOMER_REMARKS[rng.randrange(5)] if r() < 0.15 else None
        phone = p.phone if r() < 0.9 else None
        referer = "https://www.google.com/" if r() < 0.2 else None
        notes = {  # include=notes / include=shippingDetails only
            "customerRemark": remark,
            "eshopRemark": "Zákazník volal" if r() < 0.03 else None,
            "trackingNumber": tracking,
            "trackingUrl": f"https://tracking.example.cz/?id={tracking}" if tracking else None,
            "additionalFields": [],
        }
        order = {
            "code": code,
            "guid": guid,
            "externalCode": None,
            "creationTime": fmt_dt(created),
            "changeTime": fmt_dt(changed) if changed is not None else None,
            "email": email,
            "phone": phone,
            "birthDate": None,
            "clientIPAddress": ip,
            "customerGuid": customer_guid,
            "cashDeskOrder": cash_desk,
            "stockId": 1,
            "addressesEqual": equal,
            "vatPayer": vat_payer,
            "vatMode": "One Stop Shop" if eur and p.company is None else "Normal",
            "billingMethod": {"id": bill_id, "name": bill_name},
            "paymentMethod": {"guid": pay_guid, "name": pay_name},
            "shipping": {"guid": ship_guid, "name": ship_name},
            "adminUrl": f"{V.SHOP_URL}/admin/objednavky-detail?id={idx + 1}",
            "status": {"id": status, "name": V.ORDER_STATUSES[status]},
            "source": {"id": -3, "name": "Pokladna"} if cash_desk else {"id": -1, "name": "E-shop"},
            "salesChannelGuid": None,
            "price": {
                "vat": h_vat,
                "toPay": h_with,
                "currencyCode": currency,
                "withoutVat": h_wo,
                "withVat": h_with,
                "exchangeRate": f"{rate_milli / 1000:.8f}",
            },
            "paid": paid,
            "billingAddress": _billing_address(p, "verified" if p.vat_id else None),
            "deliveryAddress": delivery,
            "onlinePaymentLink": f"{V.SHOP_URL}/objednavka/platba/{code}/" if pay_i == 2 and not paid else None,
            "language": language,
            "referer": referer,
            "paymentMethods": [{"paymentMethod": {"guid": pay_guid, "name": pay_name}, "itemId": billing["itemId"]}],
            "shippings": [{"shipping": {"guid": ship_guid, "name": ship_name}, "itemId": shipping["itemId"]}],
            "items": lines.items,
            "notes": notes,
            "shippingDetails": _shipping_details(rng, p, ship_company) if ship_i == 1 else None,
            "preAuthorization": {"hasPendingPreAuthorization": False, "preAuthorizationAmount": "0.00"},
            "completion": lines.completion,
        }
        return order, created, changed

    def _buyer(self, rng: random.Random) -> tuple[str | None, Person]:
        """The ordering customer's GUID (None for a guest) and person."""
        spec = self.spec
        if spec.customers == 0 or rng.random() < GUEST_RATE:
            return None, _person(rng, None)
        customer_guid, p, _ = customer_core(spec.seed, rng.randrange(spec.customers))
        return customer_guid, p

    def _order_guid(self, rng: random.Random, idx: int) -> str | None:
        guid = _guid(rng)
        if idx < self.spec.orders * OLD_NULL_GUID_SHARE and rng.random() < OLD_NULL_GUID_RATE:
            return None  # the shop's oldest orders predate GUIDs
        return guid

    def _add_product_lines(self, rng: random.Random, lines: _OrderLines, conv: Callable[[int], int]) -> None:
        """1-4 product lines (avg ~2.3), so an order has ~5 rows with shipping and billing."""
        r = rng.random
        x = r()
        n_lines = 1 if x < 0.3 else 2 if x < 0.6 else 3 if x < 0.85 else 4
        plain = self.plain
        for _ in range(n_lines):
            ci = plain[rng.randrange(len(plain))]
            if ci.decimals:
                milli = rng.randrange(5, 40) * 100
            else:
                y = r()
                milli = 1000 if y < 0.7 else 2000 if y < 0.9 else rng.randrange(3, 6) * 1000
            ratio_bp, ratio = (9000, "0.9000") if r() < 0.1 else (10000, "1.0000")
            lines.add("product", ci, ci.name, conv(ci.price_c * ratio_bp // 10000), milli, ci.vat, ratio)

    def _add_extra_lines(self, rng: random.Random, lines: _OrderLines, conv: Callable[[int], int]) -> None:
        """Occasional rows of the other item types, each at its own rate."""
        for t, rate in zip(_EXTRA_TYPES, _EXTRA_RATES, strict=True):
            if rng.random() < rate:
                self._add_extra_line(t, rng, lines, conv)

    def _add_extra_line(self, t: str, rng: random.Random, lines: _OrderLines, conv: Callable[[int], int]) -> None:
        plain = self.plain
        if t == "discount-coupon":
            coupon = V.COUPONS[rng.randrange(len(V.COUPONS))]
            name = f"Slevový kupón {coupon}"
            lines.add(t, None, name, -(lines.products_sum // 10), 1000, 21, code=coupon)
        elif t == "volume-discount":
            lines.add(t, None, "Množstevní sleva 5 %", -(lines.products_sum // 20), 1000, 21)
        elif t == "gift":
            lines.add(t, plain[rng.randrange(len(plain))], "", 0, 1000, 21)
        elif t in ("service", "bazar", "product-set"):
            pool = self.catalog.by_type.get(t)
            if not pool:
                return
            ci = pool[rng.randrange(len(pool))]
            item = lines.add(t, ci, ci.name, conv(ci.price_c), 1000, ci.vat)
            if t == "product-set":
                lines.add_set_parts(self.catalog.set_parts.get(ci.code, []), item["itemId"])
        elif t == "deposit":
            lines.add(t, None, "Záloha za vratný obal", conv(500), rng.randrange(1, 7) * 1000, 21, unit="ks")
        elif t == "generic-item":
            lines.add(t, None, "Manipulační poplatek", conv(2900), 1000, 21)
        elif t == "gift-certificate":
            lines.add(t, None, "Dárkový poukaz 500 Kč", conv(50000), 1000, 0)


class OrderStream:
    """Sequential order generation: order #i falls in slot i of the span, codes count per year."""

    def __init__(self, spec: ShopSpec, catalog: Catalog | None = None) -> None:
        self.spec = spec
        if catalog is None:
            catalog = Catalog.from_products(spec, (p for p, _, _ in iter_products_full(spec)))
        self.factory = OrderFactory(spec, catalog)
        self.year_seq: dict[int, int] = {}

    def next_code(self, epoch: int) -> str:
        year = int(fmt_dt(epoch)[:4])
        seq = self.year_seq.get(year, 0) + 1
        self.year_seq[year] = seq
        return f"{year}{seq:06d}"

    def __iter__(self) -> Iterator[tuple[dict, int, int | None]]:
        spec = self.spec
        rng = random.Random(f"{spec.seed}/orders")
        ref = spec.ref_epoch
        span = int(spec.years * YEAR)
        start = ref - span
        n = max(1, spec.orders)
        step = span / n
        build = self.factory.build
        for i in range(spec.orders):
            created = min(ref - 1, start + int((i + rng.random()) * step))
            yield build(rng, i, created, self.next_code(created), ref)


# ---------------------------------------------------------------- public streaming API


def _spec_for(entity: str, count: int, seed: int, spec: ShopSpec | None) -> ShopSpec:
    if spec is None:
        if entity == "orders":
            return ShopSpec.for_orders(count, seed)
        base = ShopSpec.for_orders(count * 3 if entity == "customers" else count * 40, seed)
        return replace(base, **{entity: count})
    return replace(spec, **{entity: count})


def iter_orders(
    count: int, seed: int = 42, *, spec: ShopSpec | None = None, include: Iterable[str] = ()
) -> Iterator[dict]:
    """`count` orders of the shop `spec` (default `ShopSpec.for_orders(count, seed)`), oldest first."""
    from .render import render_order

    inc = frozenset(include)
    for order, _, _ in OrderStream(_spec_for("orders", count, seed, spec)):
        yield render_order(order, inc)


def iter_customers(count: int, seed: int = 42, *, spec: ShopSpec | None = None) -> Iterator[dict]:
    s = _spec_for("customers", count, seed, spec)
    for i in range(s.customers):
        yield build_customer(s, i)[0]


def iter_products(
    count: int, seed: int = 42, *, spec: ShopSpec | None = None, include: Iterable[str] = ()
) -> Iterator[dict]:
    from .render import render_product

    inc = frozenset(include)
    s = _spec_for("products", count, seed, spec)
    for product, _, _ in iter_products_full(s):
        yield render_product(product, inc)


def write_snapshot(
    entity: str,
    count: int,
    out: str | os.PathLike[str],
    seed: int = 42,
    *,
    spec: ShopSpec | None = None,
    include: Iterable[str] = (),
) -> int:
    """Write `count` entities as a gzip JSON Lines snapshot file (bare entity per line); return lines.

    Streams in constant memory. Lines are exactly what `/api/{entity}/snapshot` would serve for
    the same shop and `include`.
    """
    if entity not in ENTITIES:
        raise ValueError(f"entity must be one of {ENTITIES}, not {entity!r}")
    it: Iterator[dict]
    if entity == "orders":
        it = iter_orders(count, seed, spec=spec, include=include)
    elif entity == "customers":
        it = iter_customers(count, seed, spec=spec)
    else:
        it = iter_products(count, seed, spec=spec, include=include)
    return write_gzip_lines(out, map(orjson.dumps, it))


def write_gzip_lines(out: str | os.PathLike[str], lines: Iterable[bytes]) -> int:
    """Write ``lines`` (without their newlines) as a gzip file, in batches; return how many.

    mtime=0 keeps the gzip header free of the wall clock: same input -> same bytes.
    """
    n = 0
    batch: list[bytes] = []
    with (
        open(out, "wb") as raw,
        gzip.GzipFile(filename="", fileobj=raw, mode="wb", compresslevel=1, mtime=0) as gz,
    ):
        for line in lines:
            batch.append(line)
            n += 1
            if len(batch) >= 512:
                gz.write(b"\n".join(batch) + b"\n")
                batch.clear()
        if batch:
            gz.write(b"\n".join(batch) + b"\n")
    return n
