"""The sandbox shop's data: entities, filter indexes and the change log, mutable from tests.

Entities are kept as orjson bytes (about 5 KB per order instead of ~10 KB of dicts) with a
small index tuple for filtering, so 200 000 orders still fit comfortably. Records are
immutable: a mutation replaces the record, which lets a snapshot job keep a consistent list of
records captured at request time without copying data.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from typing import Any, NamedTuple

import orjson

from .clock import Clock
from .formats import fmt_dt, parse_dt
from .generator import (
    Catalog,
    OrderStream,
    ShopSpec,
    build_customer,
    build_product,
)

ENTITIES = ("orders", "customers", "products")
KEY_FIELD = {"orders": "code", "customers": "guid", "products": "guid"}
CHANGE_HORIZON = 30 * 86400  # change logs keep 30 days (reference §6, §9.13)
CANCELLED = {"id": -4, "name": "Stornována"}


class OrderIdx(NamedTuple):
    status: int | None
    customer: str | None
    email: str | None
    phone: str | None
    shipping: str | None
    payment: str | None
    source: int | None
    product_codes: tuple[str, ...]


class CustomerIdx(NamedTuple):
    emails: tuple[str, ...]
    phones: tuple[str, ...]


class ProductIdx(NamedTuple):
    codes: tuple[str, ...]
    visibility: str
    type: str
    brand_code: str | None
    brand_name: str | None
    default_category: str | None
    categories: tuple[str, ...]
    supplier: str | None
    flags: tuple[str, ...]
    availability: tuple[int, ...]
    sold_out: tuple[int, ...]


class Record:
    __slots__ = ("key", "raw", "created", "changed", "idx")

    def __init__(self, key: str, raw: bytes, created: float | None, changed: float | None, idx: Any) -> None:
        self.key = key
        self.raw = raw
        self.created = created
        self.changed = changed
        self.idx = idx

    def data(self) -> dict:
        return orjson.loads(self.raw)


def _order_idx(o: dict) -> OrderIdx:
    return OrderIdx(
        (o.get("status") or {}).get("id"),
        o.get("customerGuid"),
        o["email"].lower() if o.get("email") else None,
        o.get("phone"),
        (o.get("shipping") or {}).get("guid"),
        (o.get("paymentMethod") or {}).get("guid"),
        (o.get("source") or {}).get("id"),
        tuple(it["code"] for it in o.get("items", ()) if it.get("code")),
    )


def _customer_idx(c: dict) -> CustomerIdx:
    accounts = c.get("accounts") or []
    return CustomerIdx(
        tuple(a["email"].lower() for a in accounts if a.get("email")),
        tuple(a["phone"] for a in accounts if a.get("phone")),
    )


def _product_idx(p: dict) -> ProductIdx:
    variants = p.get("variants") or []
    brand = p.get("brand") or {}
    return ProductIdx(
        tuple(v["code"] for v in variants),
        p.get("visibility", ""),
        p.get("type", ""),
        brand.get("code"),
        brand.get("name"),
        (p.get("defaultCategory") or {}).get("guid"),
        tuple(c["guid"] for c in p.get("categories") or []),
        (p.get("supplier") or {}).get("guid"),
        tuple(f["code"] for f in p.get("flags") or []),
        tuple(v["availability"]["id"] for v in variants if v.get("availability")),
        tuple(v["availabilityWhenSoldOut"]["id"] for v in variants if v.get("availabilityWhenSoldOut")),
    )


_INDEXERS: dict[str, Callable[[dict], Any]] = {
    "orders": _order_idx,
    "customers": _customer_idx,
    "products": _product_idx,
}


def _epoch(value: str | None) -> float | None:
    return parse_dt(value) if value else None


class EntityStore:
    """All entities of the sandbox shop plus the per-entity change log (last change only)."""

    def __init__(self, spec: ShopSpec, clock: Clock) -> None:
        self.spec = spec
        self.clock = clock
        self._lock = threading.RLock()
        self._records: dict[str, dict[str, Record]] = {e: {} for e in ENTITIES}
        self._changes: dict[str, dict[str, tuple[float, str]]] = {e: {} for e in ENTITIES}
        self._live_rng = random.Random(f"{spec.seed}/live")
        self._next_index = {"orders": spec.orders, "customers": spec.customers, "products": spec.products}
        self._load()

    # ------------------------------------------------------------ loading

    def _put(
        self,
        entity: str,
        data: dict,
        created: float | None,
        changed: float | None,
        change_type: str | None = "edit",
    ) -> Record:
        key = data[KEY_FIELD[entity]]
        # orjson over-allocates its output buffer; an exact-size copy keeps 200k orders at ~1 GB, not ~3 GB
        raw = bytes(memoryview(orjson.dumps(data)))
        rec = Record(key, raw, created, changed, _INDEXERS[entity](data))
        self._records[entity][key] = rec
        # creations are reported as `edit` too (reference §6), also when changeTime is null (never edited):
        # the log entry is then the creation, or a fetch could never learn of the entity
        logged = changed if changed is not None else created
        if logged is not None and change_type:
            self._changes[entity][key] = (logged, change_type)
        return rec

    def _load(self) -> None:
        spec = self.spec
        products = []
        for k in range(spec.products):
            p, created, changed = build_product(spec, k)
            products.append(p)
            self._put("products", p, created, changed)
        self._orders = OrderStream(spec, Catalog.from_products(spec, products))
        del products
        for i in range(spec.customers):
            c, created, changed = build_customer(spec, i)
            self._put("customers", c, created, changed)
        for o, created, changed in self._orders:
            self._put("orders", o, created, changed)

    # ------------------------------------------------------------ reading

    def records(self, entity: str) -> list[Record]:
        """A consistent list of the current records (in store order)."""
        with self._lock:
            return list(self._records[entity].values())

    def record(self, entity: str, key: str) -> Record | None:
        with self._lock:
            return self._records[entity].get(key)

    def get(self, entity: str, key: str) -> dict | None:
        rec = self.record(entity, key)
        return rec.data() if rec else None

    def count(self, entity: str) -> int:
        with self._lock:
            return len(self._records[entity])

    def keys(self, entity: str) -> list[str]:
        with self._lock:
            return list(self._records[entity])

    def changes(self, entity: str, since: float, change_type: str | None = None) -> list[tuple[str, float, str]]:
        """(key, changeTime, changeType) since `since` (inclusive) within the 30-day horizon, oldest first."""
        lo = max(since, self.clock.time() - CHANGE_HORIZON)
        with self._lock:
            out = [
                (k, t, ct)
                for k, (t, ct) in self._changes[entity].items()
                if t >= lo and (change_type is None or ct == change_type)
            ]
        out.sort(key=lambda x: (x[1], x[0]))
        return out

    # ------------------------------------------------------------ mutating (tests, demo)

    def update(self, entity: str, key: str, **fields: Any) -> dict:
        """Merge `fields` into the entity; bumps changeTime to now unless given; logs an `edit`."""
        with self._lock:
            rec = self._records[entity].get(key)
            if rec is None:
                raise KeyError(f"{entity} {key!r} not found")
            data = rec.data()
            data.update(fields)
            if "changeTime" not in fields:
                data["changeTime"] = fmt_dt(self.clock.time())
            if data[KEY_FIELD[entity]] != key:
                raise ValueError(f"cannot change the key field {KEY_FIELD[entity]}")
            self._put(entity, data, _epoch(data.get("creationTime")), _epoch(data.get("changeTime")))
            return data

    def delete(self, entity: str, key: str) -> None:
        """Remove the entity and log a `delete` change (the only way clients learn of deletions)."""
        with self._lock:
            if self._records[entity].pop(key, None) is None:
                raise KeyError(f"{entity} {key!r} not found")
            self._changes[entity][key] = (float(int(self.clock.time())), "delete")

    def add(self, entity: str, **fields: Any) -> dict:
        """Create a realistic new entity at the clock's now (logged as `edit`); `fields` override."""
        with self._lock:
            now = int(self.clock.time())
            idx = self._next_index[entity]
            self._next_index[entity] = idx + 1
            if entity == "orders":
                code = fields.get("code") or self._orders.next_code(now)
                data, _, _ = self._orders.factory.build(self._live_rng, idx, now, code, now)
                data["changeTime"] = fmt_dt(now)
            elif entity == "customers":
                data, _, _ = build_customer(self.spec, idx, now=now)
            elif entity == "products":
                data, _, _ = build_product(self.spec, idx, now=now)
            else:
                raise ValueError(entity)
            data.update(fields)
            key = data[KEY_FIELD[entity]]
            if key in self._records[entity]:
                raise ValueError(f"{entity} {key!r} already exists")
            self._put(entity, data, _epoch(data.get("creationTime")), _epoch(data.get("changeTime")))
            return data

    # named conveniences
    def get_order(self, code: str) -> dict | None:
        return self.get("orders", code)

    def get_customer(self, guid: str) -> dict | None:
        return self.get("customers", guid)

    def get_product(self, guid: str) -> dict | None:
        return self.get("products", guid)

    def update_order(self, code: str, **fields: Any) -> dict:
        return self.update("orders", code, **fields)

    def update_customer(self, guid: str, **fields: Any) -> dict:
        return self.update("customers", guid, **fields)

    def update_product(self, guid: str, **fields: Any) -> dict:
        return self.update("products", guid, **fields)

    def delete_order(self, code: str) -> None:
        self.delete("orders", code)

    def delete_customer(self, guid: str) -> None:
        self.delete("customers", guid)

    def delete_product(self, guid: str) -> None:
        self.delete("products", guid)

    def add_order(self, **fields: Any) -> dict:
        return self.add("orders", **fields)

    def add_customer(self, **fields: Any) -> dict:
        return self.add("customers", **fields)

    def add_product(self, **fields: Any) -> dict:
        return self.add("products", **fields)

    def cancel_order(self, code: str) -> dict:
        """Cancel like Shoptet does: status -4, header money 0.00, item prices kept (reference §9.8)."""
        with self._lock:
            order = self.get_order(code)
            if order is None:
                raise KeyError(f"orders {code!r} not found")
            price = dict(order["price"], vat="0.00", toPay="0.00", withoutVat="0.00", withVat="0.00")
            items = [dict(it, status=dict(CANCELLED)) for it in order["items"]]
            return self.update("orders", code, status=dict(CANCELLED), price=price, items=items)
