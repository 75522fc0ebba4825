"""The shop-life model: the store gains, changes and loses entities on the clock, the change feeds say so,
and one seed gives the same life."""

from __future__ import annotations

from datetime import timedelta

from shoptet.sandbox import REFERENCE, ManualClock
from shoptet.sandbox.formats import parse_dt
from shoptet.sandbox.generator import ShopSpec
from shoptet.sandbox.life import ShopLife
from shoptet.sandbox.store import EntityStore


def _life(seed: int = 3) -> tuple[EntityStore, ManualClock, ShopLife]:
    clock = ManualClock(REFERENCE)
    store = EntityStore(ShopSpec(orders=300, customers=100, products=30, seed=seed, reference=REFERENCE), clock)
    return store, clock, ShopLife(store, clock, seed=seed, scale=0.05)


def test_two_days_of_life_add_change_and_delete_and_the_change_log_reports_it() -> None:
    store, clock, life = _life()
    before = set(store.keys("orders"))
    since = clock.time()
    life.live_until(since + 2 * 86400)
    clock.advance(2 * 86400)
    after = set(store.keys("orders"))
    counts = life.stats.counts
    assert len(after - before) + counts.get("order_deletes", 0) >= counts["orders"] > 100
    assert counts["order_changes"] > 0 and counts["customers_added"] > 0
    changes = {k: t for k, _, t in store.changes("orders", since)}
    assert all(changes[k] == "edit" for k in after - before)  # creations are reported as edits
    assert sum(1 for t in changes.values() if t == "delete") == counts.get("order_deletes", 0)
    # events happen in the open hours only (06-22 UTC), each at its own second
    hours = {parse_dt(store.get("orders", k)["creationTime"]) // 3600 % 24 for k in after - before}
    assert hours and all(6 <= h < 22 for h in hours)
    assert clock.time() == since + 2 * 86400  # life leaves the clock where it was


def test_one_seed_one_life() -> None:
    a, _, la = _life(5)
    b, _, lb = _life(5)
    for life in (la, lb):
        life.live_until(life.clock.time() + 86400 + timedelta(hours=1).total_seconds())
    assert la.stats.counts == lb.stats.counts
    assert [r.raw for r in a.records("orders")] == [r.raw for r in b.records("orders")]


def test_a_creation_is_logged_even_when_change_time_is_null() -> None:
    """A customer (or product) the shop creates may have changeTime null; the change log still reports the
    creation as an `edit` at its creation time (reference §6), or a fetch could never learn of it."""
    store, clock, _ = _life()
    since = clock.time()
    clock.advance(60)
    c = store.add("customers", changeTime=None)
    p = store.add("products", changeTime=None)
    for entity, key, data in (("customers", c["guid"], c), ("products", p["guid"], p)):
        log = {k: (t, ct) for k, t, ct in store.changes(entity, since)}
        assert log[key] == (parse_dt(data["creationTime"]), "edit")


def test_the_soak_customer_that_had_no_change_log_entry() -> None:
    """Seed 20261209: live customer #713 (b5f5750a-…) is built fresh with changeTime null."""
    from datetime import UTC, datetime

    from shoptet.sandbox.generator import build_customer

    spec = ShopSpec(orders=2000, customers=666, products=50, seed=20261209, reference=datetime(2022, 1, 3, tzinfo=UTC))
    data, created, changed = build_customer(spec, 713, now=1_649_000_000)
    assert data["guid"] == "b5f5750a-8712-1453-92df-8f7bcde430a6" and changed is None
    clock = ManualClock(datetime.fromtimestamp(1_649_000_000, UTC))
    store = EntityStore(ShopSpec(orders=10, customers=5, products=5, seed=1, reference=REFERENCE), clock)
    since = clock.time()
    store.add("customers", **data)
    assert data["guid"] in {k for k, _, _ in store.changes("customers", since)}
