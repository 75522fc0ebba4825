"""A living shop: each simulated hour the sandbox's store gains, changes and loses entities.

The rates are per simulated day at ``scale`` 1 (the original shop's shape: ~1 800 orders a day); a scale
of 0.01 is a small shop for tests. Everything goes through the store's own mutators, so the change logs,
snapshots (full and ``changeTimeFrom``), jobs and webhooks see it as the real API would. One seed
reproduces the same life: the RNG is the model's own, and it acts only when told to (``live_until``).
"""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime

from .clock import Clock
from .store import EntityStore

HOUR = 3600


@dataclass(frozen=True)
class LifeRates:
    """Events per simulated day at scale 1."""

    orders: float = 1800.0
    returning_share: float = 0.4  # new orders placed by a customer the shop added while living
    order_changes: float = 400.0  # status moves, items edited, address fixed
    order_cancels: float = 40.0
    order_deletes: float = 10.0
    customers_added: float = 120.0
    customer_edits: float = 60.0
    customer_deletes: float = 5.0
    products_added: float = 5.0
    product_edits: float = 30.0
    product_deletes: float = 1.0
    order_edit_days: int = 90  # how far back orders are still changed, cancelled or deleted
    open_hours: tuple[int, int] = (6, 22)  # UTC hours the shop acts in (quiet nights, like a real shop)


@dataclass
class LifeStats:
    counts: dict[str, int] = field(default_factory=dict)

    def add(self, what: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1


class ShopLife:
    """Drives ``store`` along ``clock``: call ``live_until(t)`` as time moves on."""

    def __init__(self, store: EntityStore, clock: Clock, *, seed: int, scale: float, rates: LifeRates | None = None):
        self.store = store
        self.clock = clock
        self.rng = random.Random(f"{seed}/life")
        self.scale = scale
        self.rates = rates or LifeRates()
        self.stats = LifeStats()
        self._done_until = int(clock.time()) // HOUR * HOUR
        self._new_customers: list[str] = []

    def live_until(self, until: float) -> None:
        """Play every open hour between the last call and ``until`` (the clock is left where it was)."""
        lo, hi = self.rates.open_hours
        while self._done_until + HOUR <= until:
            hour = self._done_until
            self._done_until += HOUR
            if lo <= (hour // HOUR) % 24 < hi:
                self._hour(hour)

    def _count(self, per_day: float) -> int:
        """How many of an event fall in one open hour (a Poisson-ish draw, deterministic per seed)."""
        lo, hi = self.rates.open_hours
        mean = per_day * self.scale / (hi - lo)
        whole = int(mean)
        return whole + (1 if self.rng.random() < mean - whole else 0)

    def _hour(self, hour: int) -> None:
        r = self.rates
        plan = [
            ("customers_added", r.customers_added, self._add_customer),
            ("orders", r.orders, self._add_order),
            ("order_changes", r.order_changes, self._change_order),
            ("order_cancels", r.order_cancels, self._cancel_order),
            ("order_deletes", r.order_deletes, self._delete_order),
            ("customer_edits", r.customer_edits, self._edit_customer),
            ("customer_deletes", r.customer_deletes, self._delete_customer),
            ("products_added", r.products_added, self._add_product),
            ("product_edits", r.product_edits, self._edit_product),
            ("product_deletes", r.product_deletes, self._delete_product),
        ]
        events = [(name, fn) for name, rate, fn in plan for _ in range(self._count(rate))]
        self.rng.shuffle(events)
        # each event at its own second of the hour, in order, so changeTime moves on within the hour
        seconds = sorted(self.rng.sample(range(HOUR), len(events))) if len(events) <= HOUR else [0] * len(events)
        saved = self.clock.time()
        try:
            for (name, fn), s in zip(events, seconds, strict=True):
                self._set(hour + s)
                if fn():
                    self.stats.add(name)
        finally:
            self._set(saved)

    def _set(self, t: float) -> None:
        """Place the next event at ``t`` on a manual clock; a real clock (``--live``) keeps its own now."""
        set_to = getattr(self.clock, "set", None)
        if set_to is not None:
            set_to(datetime.fromtimestamp(t, UTC))

    def start_live(self, stop: threading.Event, tick: float = 1.0) -> threading.Thread:
        """`hub sandbox --live`: a daemon thread living each finished hour of the (scaled) real clock."""

        def loop() -> None:
            while not stop.wait(tick):
                self.live_until(self.clock.time())

        t = threading.Thread(target=loop, name="shoptet-sandbox-life", daemon=True)
        t.start()
        return t

    def _pick(self, entity: str) -> str | None:
        keys = self.store.keys(entity)
        if entity == "orders":  # a shop edits, cancels and deletes recent orders, not those of years ago
            since = self.clock.time() - self.rates.order_edit_days * 86400
            keys = [r.key for r in self.store.records("orders") if (r.created or 0) >= since]
        return self.rng.choice(keys) if keys else None

    # ------------------------------------------------------------ orders

    def _add_order(self) -> bool:
        fields: dict = {}
        if self._new_customers and self.rng.random() < self.rates.returning_share:
            guid = self.rng.choice(self._new_customers)
            c = self.store.get("customers", guid)
            if c is not None:
                fields = {"customerGuid": guid, "email": (c.get("accounts") or [{}])[0].get("email")}
        self.store.add("orders", **fields)
        return True

    def _change_order(self) -> bool:
        code = self._pick("orders")
        order = self.store.get("orders", code) if code else None
        if order is None or (order.get("status") or {}).get("id") == -4:
            return False
        kind = self.rng.random()
        if kind < 0.5:
            status = self.rng.choice([{"id": -2, "name": "Vyřizuje se"}, {"id": -3, "name": "Vyřízena"}])
            items = [dict(it, status=dict(status)) for it in order["items"]]
            self.store.update("orders", code, status=status, items=items)
        elif kind < 0.8 and len(order["items"]) > 1:
            self.store.update("orders", code, items=order["items"][:-1])  # a line removed
        else:
            billing = dict(order.get("billingAddress") or {}, street=f"Opravená {self.rng.randrange(1, 200)}")
            self.store.update("orders", code, billingAddress=billing)
        return True

    def _cancel_order(self) -> bool:
        code = self._pick("orders")
        if code is None:
            return False
        self.store.cancel_order(code)
        return True

    def _delete_order(self) -> bool:
        code = self._pick("orders")
        if code is None:
            return False
        self.store.delete("orders", code)
        return True

    # ------------------------------------------------------------ customers and products

    def _add_customer(self) -> bool:
        c = self.store.add("customers")
        self._new_customers.append(c["guid"])
        return True

    def _edit_customer(self) -> bool:
        guid = self._pick("customers")
        c = self.store.get("customers", guid) if guid else None
        if c is None:
            return False
        billing = dict(c.get("billingAddress") or {}, city=self.rng.choice(["Praha", "Brno", "Ostrava", "Plzeň"]))
        self.store.update("customers", guid, billingAddress=billing)
        return True

    def _delete_customer(self) -> bool:
        guid = self._pick("customers")
        if guid is None:
            return False
        self.store.delete("customers", guid)
        if guid in self._new_customers:
            self._new_customers.remove(guid)
        return True

    def _add_product(self) -> bool:
        self.store.add("products")
        return True

    def _edit_product(self) -> bool:
        guid = self._pick("products")
        p = self.store.get("products", guid) if guid else None
        if p is None:
            return False
        variants = [dict(v, price=f"{self.rng.randrange(100, 9000)}.00") for v in p.get("variants") or []]
        self.store.update("products", guid, name=f"{p.get('name', '')}".split(" (")[0] + " (nová)", variants=variants)
        return True

    def _delete_product(self) -> bool:
        guid = self._pick("products")
        if guid is None or self.store.count("products") < 10:
            return False
        self.store.delete("products", guid)
        return True


def describe(stats: LifeStats) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(stats.counts.items()))


__all__ = ["HOUR", "LifeRates", "LifeStats", "ShopLife", "describe"]
