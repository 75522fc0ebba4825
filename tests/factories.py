"""Small builders of Shoptet entities for tests, shaped like reference §10 (the OpenAPI examples)."""

from __future__ import annotations

import copy
import gzip
from pathlib import Path
from typing import Any

import orjson

_ITEM = {
    "itemId": 5019, "itemType": "product", "productGuid": "0d9e8f7a-1b2c-11ee-b534-2a01067a25a9",
    "code": "HRN-05-MOD", "ean": "8591234567890", "productType": "product", "name": "Hrnek smaltovaný 0,5 l",
    "variantName": "Barva: modrá", "brand": "Smalt Co.", "remark": None, "weight": "0.350",
    "additionalField": None, "amount": "2.000", "amountUnit": "ks", "amountCompleted": "0.000",
    "priceRatio": "1.0000", "status": {"id": -2, "name": "Vyřizuje se"},
    "itemPrice": {"withVat": "998.00", "withoutVat": "824.79", "vat": "173.21", "vatRate": "21.00"},
    "unitPrice": {"withVat": "499.00", "withoutVat": "412.40", "vat": "86.60", "vatRate": "21.00"},
    "purchasePrice": None, "recyclingFee": None, "warrantyDescription": "24 měsíců",
}  # fmt: skip

_ADDRESS = {
    "company": None, "fullName": "Jana Nováková", "street": "Korunní", "houseNumber": "12", "city": "Praha 2",
    "district": None, "additional": None, "zip": "120 00", "countryCode": "CZ", "regionName": None,
    "regionShortcut": None,
}  # fmt: skip

_ORDER = {
    "code": "2026000123", "guid": "6f1c2a9e-8b3d-11f0-9c41-0242ac120002", "externalCode": None,
    "creationTime": "2026-09-14T10:21:07+0200", "changeTime": "2026-09-15T08:02:44+0200",
    "email": "jana.novakova@example.cz", "phone": "+420601234567", "birthDate": None,
    "clientIPAddress": "203.0.113.17", "customerGuid": "a2b4c6d8-8b3d-11f0-9c41-0242ac120002",
    "cashDeskOrder": False, "stockId": 1, "addressesEqual": True, "vatPayer": True, "vatMode": "Normal",
    "billingMethod": {"id": 2, "name": "Převodem"},
    "paymentMethod": {"guid": "6f2c8e36-3faf-11e2-a723-705ab6a2ba75", "name": "Bankovní převod"},
    "shipping": {"guid": "2ec88ea7-3fb0-11e2-a723-705ab6a2ba75", "name": "PPL"},
    "adminUrl": "https://www.example-shop.cz/admin/objednavky-detail?id=123",
    "status": {"id": -2, "name": "Vyřizuje se"}, "source": {"id": -1, "name": "E-shop"}, "salesChannelGuid": None,
    "price": {"vat": "190.39", "toPay": "1097.00", "currencyCode": "CZK", "withoutVat": "906.61",
              "withVat": "1097.00", "exchangeRate": "1.00000000"},
    "paid": False,
    "billingAddress": {**_ADDRESS, "companyId": None, "vatId": None, "vatIdValidationStatus": None, "taxId": None},
    "deliveryAddress": dict(_ADDRESS),
    "items": [],
}  # fmt: skip


def order(
    code: str = "2026000123",
    *,
    created: str = "2026-09-14T10:21:07+0200",
    changed: str | None = "2026-09-15T08:02:44+0200",
    items: int = 3,
    **over: Any,
) -> dict:
    o = copy.deepcopy(_ORDER)
    o.update(code=code, creationTime=created, changeTime=changed)
    lines = []
    for i in range(items):
        it = copy.deepcopy(_ITEM)
        it["itemId"] = 1000 + i
        if i == items - 1 and items > 1:
            it.update(itemType="shipping", productGuid=None, code=None, ean=None, name="PPL", amount="1.000")
        lines.append(it)
    o["items"] = lines
    o.update(over)
    return o


def customer(
    guid: str = "a2b4c6d8-8b3d-11f0-9c41-0242ac120002",
    *,
    changed: str = "2026-09-14T10:21:07+0200",
    email: str | None = "jana.novakova@example.cz",
    **over: Any,
) -> dict:
    c = {
        "guid": guid, "creationTime": "2024-03-02T18:44:10+0100", "changeTime": changed,
        "billingAddress": {**_ADDRESS, "companyId": None, "vatId": None, "vatIdValidationStatus": None,
                           "taxId": None},
        "deliveryAddress": [{**_ADDRESS, "guid": "c9e976a5-340b-11e4-b500-ac162d8a2454", "isDefault": True}],
        "customerGroup": {"id": 1, "name": "Registrovaní zákazníci"}, "priceList": None, "remark": None,
        "priceRatio": "1.0000", "birthDate": None,
        "accounts": [] if email is None else [
            {"guid": "b3c5d7e9-8b3d-11f0-9c41-0242ac120002", "fullName": "Jana Nováková", "email": email,
             "phone": "+420601234567", "mainAccount": True, "authorized": True, "emailVerified": True}],
        "disabledOrders": False, "remarks": [], "adminUrl": "https://www.example-shop.cz/admin/zakaznici-detail?id=1",
    }  # fmt: skip
    c.update(over)
    return c


def variant(code: str, **over: Any) -> dict:
    v = {
        "code": code, "ean": "8591234567890", "stock": "14.000", "unit": "ks", "weight": "0.350", "width": "9.0",
        "height": "10.0", "depth": "9.0", "visible": True, "price": "499.00", "commonPrice": "549.00",
        "includingVat": True, "vatRate": "21.00", "currencyCode": "CZK", "minStockSupply": None,
        "actionPrice": None, "manufacturerCode": None, "pluCode": None, "isbn": None, "serialNo": None,
        "mpn": None, "negativeStockAllowed": "no-global", "amountDecimalPlaces": 0, "availability": None,
        "availabilityWhenSoldOut": {"id": -1, "name": "Vyprodáno"},
    }  # fmt: skip
    v.update(over)
    return v


def product(
    guid: str = "0d9e8f7a-1b2c-11ee-b534-2a01067a25a9",
    *,
    changed: str = "2026-09-10T16:40:12+0200",
    variants: list[str] | None = None,
    **over: Any,
) -> dict:
    p = {
        "guid": guid, "type": "product", "name": "Hrnek smaltovaný 0,5 l", "indexName": "hrnek",
        "brand": {"code": "smalt-co", "name": "Smalt Co."}, "supplier": None, "visibility": "visible",
        "creationTime": "2023-11-20T09:15:00+0100", "changeTime": changed, "shortDescription": None,
        "description": None, "metaDescription": None, "url": "https://www.example-shop.cz/hrnek/",
        "internalNote": None, "hsCode": None,
        "defaultCategory": {"guid": "5a6b7c8d-1b2c-11ee-b534-2a01067a25a9", "name": "Kuchyně", "visible": True},
        "variants": [variant(c) for c in (variants or [f"{guid[:8]}-1"])],
    }  # fmt: skip
    p.update(over)
    return p


def write_jsonl(path: Path, entities: list[dict | bytes | str], *, gz: bool = True) -> Path:
    """Write entities (dicts, or raw lines for malformed input) as JSON Lines, gzip by default."""
    data = b"".join(
        (e if isinstance(e, bytes) else e.encode() if isinstance(e, str) else orjson.dumps(e)) + b"\n" for e in entities
    )
    path.write_bytes(gzip.compress(data) if gz else data)
    return path
