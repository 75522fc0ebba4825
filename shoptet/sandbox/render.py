"""Turn stored (full-form) entities into the exact shapes the API serves.

Stored entities carry every include-only section; these functions drop what was not requested
(reference §4 "section on demand") and build list-item shapes (reference §6).
"""

from __future__ import annotations

from collections.abc import Iterable

ORDER_SNAPSHOT_INCLUDES = frozenset(
    {"notes", "images", "shippingDetails", "stockLocation", "surchargeParameters", "productFlags"}
)
ORDER_DETAIL_INCLUDES = ORDER_SNAPSHOT_INCLUDES | {"paymentTransactions"}
PRODUCT_INCLUDES = frozenset(
    {
        "images",
        "variantParameters",
        "allCategories",
        "flags",
        "descriptiveParameters",
        "measureUnit",
        "surchargeParameters",
        "setItems",
        "filteringParameters",
        "recyclingFee",
        "consumptionTax",
        "warranty",
        "sortVariants",
        "gifts",
        "alternativeProducts",
        "relatedProducts",
        "relatedVideos",
        "relatedFiles",
        "perStockAmounts",
        "perPricelistPrices",
    }
)
PRODUCT_LIST_INCLUDES = frozenset({"images"})
# include sections that need a shop module the sandbox shop does not have (-> 403 missing-module)
MISSING_MODULES = {"consumptionTax": "consumptionTax"}

_ORDER_STORED_ONLY = {"notes": "notes", "shippingDetails": "shippingDetails"}
_PRODUCT_STORED_ONLY = {
    "images": "images",
    "categories": "allCategories",
    "flags": "flags",
    "setItems": "setItems",
}
_PRODUCT_EMPTY = {
    "descriptiveParameters": [],
    "surchargeParameters": [],
    "filteringParameters": [],
    "warranty": None,
    "gifts": [],
    "alternativeProducts": [],
    "relatedProducts": [],
    "relatedVideos": [],
    "relatedFiles": [],
}


def parse_includes(value: str | None, allowed: Iterable[str]) -> frozenset[str]:
    """Comma-separated, order-free, case-insensitive names -> canonical names; ValueError(name) if unknown."""
    if not value:
        return frozenset()
    canon = {a.lower(): a for a in allowed}
    out = set()
    for part in value.split(","):
        name = part.strip()
        if not name:
            continue
        if name.lower() not in canon:
            raise ValueError(name)
        out.add(canon[name.lower()])
    return frozenset(out)


def _num(v: object) -> object:
    return float(v) if isinstance(v, str) else v


def render_order(order: dict, include: frozenset[str] = frozenset(), amount_as_number: bool = False) -> dict:
    out = {k: v for k, v in order.items() if k not in _ORDER_STORED_ONLY or k in include}
    item_level = include & {"images", "stockLocation", "surchargeParameters", "productFlags"}
    if item_level or amount_as_number:
        items = []
        for it in order["items"]:
            it = dict(it)
            if amount_as_number:
                it["amount"] = _num(it["amount"])
                it["amountCompleted"] = _num(it["amountCompleted"])
            if "images" in include:
                it["mainImage"] = _main_image(it)
            if "stockLocation" in include:
                it["stockLocation"] = None
            if "surchargeParameters" in include:
                it["surchargeParameters"] = []
            if "productFlags" in include:
                it["productFlags"] = []
            items.append(it)
        out["items"] = items
        if amount_as_number:
            out["completion"] = [
                {**c, "amount": _num(c["amount"]), "amountCompleted": _num(c["amountCompleted"])}
                for c in order.get("completion", [])
            ]
    if "paymentTransactions" in include:
        out["paymentTransactions"] = []
    return out


def _main_image(item: dict) -> dict | None:
    code = item.get("code")
    if not item.get("productGuid") or not code:
        return None
    base = code.split("-")[0].lstrip("P").lstrip("0") or "0"
    name = f"{int(base) + 1}_1.jpg"
    return {
        "name": name,
        "seoName": name,
        "cdnName": name,
        "signedCdnNames": [],
        "priority": 1,
        "description": None,
        "changeTime": None,
    }


def order_list_item(order: dict) -> dict:
    bill = order.get("billingAddress") or {}
    notes = order.get("notes") or {}
    return {
        "code": order["code"],
        "guid": order["guid"],
        "creationTime": order["creationTime"],
        "changeTime": order["changeTime"],
        "fullName": bill.get("fullName"),
        "company": bill.get("company"),
        "email": order["email"],
        "phone": order["phone"],
        "remark": notes.get("customerRemark"),
        "customerGuid": order["customerGuid"],
        "cashDeskOrder": order["cashDeskOrder"],
        "adminUrl": order["adminUrl"],
        "status": order["status"],
        "source": order.get("source"),
        "shipping": order["shipping"],
        "paymentMethod": order["paymentMethod"],
        "price": order["price"],
        "paid": order["paid"],
        "preAuthorization": order.get("preAuthorization"),
        "salesChannelGuid": order.get("salesChannelGuid"),
    }


def customer_list_item(customer: dict) -> dict:
    bill = customer.get("billingAddress") or {}
    return {
        "guid": customer["guid"],
        "creationTime": customer["creationTime"],
        "changeTime": customer["changeTime"],
        "billCompany": bill.get("company"),
        "billFullName": bill.get("fullName"),
        "adminUrl": customer["adminUrl"],
    }


def render_product(product: dict, include: frozenset[str] = frozenset()) -> dict:
    out = {}
    for k, v in product.items():
        inc_name = _PRODUCT_STORED_ONLY.get(k)
        if inc_name is None:
            out[k] = v
        elif inc_name in include:
            out[k] = v
    for name, empty in _PRODUCT_EMPTY.items():
        if name in include:
            out[name] = list(empty) if isinstance(empty, list) else empty
    params = "variantParameters" in include
    variants = []
    for var in product["variants"]:
        v = dict(var)
        if not params:
            v.pop("name", None)
            v.pop("parameters", None)
        if "measureUnit" in include:
            v["measureUnit"] = None
        if "recyclingFee" in include:
            v["recyclingFee"] = None
        if "perStockAmounts" in include:
            v["perStockAmounts"] = (
                []
                if v["stock"] is None
                else [
                    {
                        "stockId": 1,
                        "amount": v["stock"],
                        "claim": "0.000",
                        "location": None,
                        "lastAmountUpdate": product["changeTime"],
                    }
                ]
            )
        if "perPricelistPrices" in include:
            v["perPricelistPrices"] = []
        variants.append(v)
    out["variants"] = variants
    return out


def product_list_item(product: dict, include: frozenset[str] = frozenset()) -> dict:
    out = {
        k: product[k]
        for k in (
            "guid",
            "name",
            "type",
            "url",
            "visibility",
            "creationTime",
            "changeTime",
            "brand",
            "supplier",
            "defaultCategory",
        )
    }
    if "images" in include:
        images = product.get("images") or []
        out["mainImage"] = images[0] if images else None
    out["voteAverageScore"] = None
    out["voteCount"] = 0
    return out
