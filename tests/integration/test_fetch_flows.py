"""Incremental fetch flows under prefect_test_harness, the sandbox as the Shoptet API (no real sleeping)."""

from __future__ import annotations

import io
import threading
import time
from datetime import UTC, datetime, timedelta

import orjson
import psycopg
import pytest
from typer.testing import CliRunner

from db.connection import libpq_url
from db.sync_state import save_watermark
from deployments.cli import app
from flows import runtime
from flows.entities import Entity
from flows.fetch import (
    WARNING_STATE,
    FetchFailed,
    NoStartingPoint,
    fetch_changes,
    fetch_new_orders,
    plan_window,
    write_details,
)
from flows.snapshot import import_snapshot
from shoptet.client import ShoptetClient

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module", autouse=True)
def harness(prefect_harness):
    yield


@pytest.fixture
def hub(db_url, sandbox, monkeypatch, no_retry_waits):
    """Flows pointed at this test's database and the sandbox; every client sleep is recorded."""
    sleeps: list[float] = []
    clients: list[ShoptetClient] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        sandbox.clock.sleep(seconds)

    def client() -> ShoptetClient:
        c = ShoptetClient(sandbox.base_url, sandbox.token, clock=sandbox.clock.time, sleep=sleep)
        clients.append(c)
        return c

    sandbox.sleeps, sandbox.clients = sleeps, clients
    with runtime.override(database_url=db_url, client_factory=client, webhook_url="https://hub.example/hook"):
        yield sandbox


def q(db_url: str, sql: str, *args):
    with psycopg.connect(libpq_url(db_url)) as c:
        return c.execute(sql, args).fetchall()


def state_of(db_url: str, entity: str = "orders"):
    rows = q(db_url, "SELECT watermark, details FROM sync_state WHERE key = %s", f"fetch:{entity}")
    return rows[0] if rows else (None, None)


def moved(r: dict) -> tuple[int, int, int]:
    return r["inserted"], r["updated"], r["deleted"]


# --- orders -------------------------------------------------------------------------------------------


def test_new_changed_and_deleted_orders_arrive_and_a_rerun_is_idempotent(hub, db_url):
    store, clock = hub.state.store, hub.clock
    import_snapshot(Entity.orders)
    # No watermark yet: starts at the newest mirrored changeTime - lookback. Details must hash like snapshot
    # lines (include=notes), so what the window re-reads is unchanged.
    first = fetch_new_orders()
    assert moved(first) == (0, 0, 0) and first["rejected"] == 0
    assert state_of(db_url)[0] == clock.now().replace(microsecond=0)

    clock.sleep(600)
    code_changed, code_deleted = store.keys("orders")[:2]
    new = store.add_order()
    store.cancel_order(code_changed)
    clock.sleep(60)
    store.delete_order(code_deleted)
    assert q(db_url, "SELECT count(*) FROM order_items WHERE order_code = %s", code_deleted)[0][0] > 0

    r = fetch_new_orders()
    assert moved(r) == (1, 1, 1) and r["rejected"] == 0
    assert q(db_url, "SELECT count(*) FROM order_items WHERE order_code = %s", new["code"])[0][0] == len(new["items"])
    assert q(db_url, "SELECT status_id, price_to_pay FROM orders WHERE code = %s", code_changed)[0] == (-4, 0)
    assert q(db_url, "SELECT count(*) FROM orders WHERE code = %s", code_deleted)[0][0] == 0
    assert q(db_url, "SELECT count(*) FROM order_items WHERE order_code = %s", code_deleted)[0][0] == 0
    assert q(db_url, "SELECT count(*) FROM orders")[0][0] == 300

    again = fetch_changes(Entity.orders)  # the same run as fetch_new_orders
    assert moved(again) == (0, 0, 0) and again["unchanged"] >= 2
    runs = q(
        db_url,
        "SELECT source, status, inserted, updated, deleted FROM snapshot_runs WHERE source = 'fetch' ORDER BY id",
    )
    assert runs == [
        ("fetch", "succeeded", 0, 0, 0),
        ("fetch", "succeeded", 1, 1, 1),
        ("fetch", "succeeded", 0, 0, 0),
    ]
    watermark, details = state_of(db_url)
    assert watermark == clock.now().replace(microsecond=0)
    assert details["deletes_may_be_missed"] is False and details["deleted"] == 0


def test_first_fetch_needs_a_snapshot_or_since(hub, db_url):
    with pytest.raises(NoStartingPoint, match="import a full snapshot first"):
        fetch_new_orders()
    assert q(db_url, "SELECT count(*) FROM snapshot_runs")[0][0] == 0
    # `since` fetches everything changed since then (here: the last 10 days of the sandbox shop).
    since = hub.clock.now() - timedelta(days=10)
    expected = sum(1 for o in hub.state.store.records("orders") if (o.changed or 0) >= since.timestamp())
    r = fetch_new_orders(since=since)
    assert r["inserted"] == expected > 0
    assert r["deletes_may_be_missed"] is False


def test_cli_exits_non_zero_with_the_reason_then_succeeds(hub, db_url, monkeypatch):
    for name in (
        "PREFECT_SERVER_ANALYTICS_ENABLED",
        "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL",
    ):  # the CLI sets them; undo after
        monkeypatch.setenv(name, "false" if "ANALYTICS" in name else "WARNING")
    runner = CliRunner()
    res = runner.invoke(app, ["fetch-orders"])
    assert res.exit_code == 1 and "import a full snapshot first" in res.output
    res = runner.invoke(app, ["fetch-changes", "customers", "--since", "not a date"])
    assert res.exit_code == 1 and "not an ISO 8601" in res.output
    since = (hub.clock.now() - timedelta(hours=1)).isoformat()
    res = runner.invoke(app, ["fetch-orders", "--lookback-hours", "1", "--since", since])
    assert res.exit_code == 0, res.output
    assert "inserted" in res.output


def test_429_storm_slows_the_fetch_down_and_loses_nothing(hub, db_url):
    store, clock = hub.state.store, hub.clock
    fetch_new_orders(since=clock.now())
    clock.sleep(60)
    added = [store.add_order()["code"] for _ in range(6)]
    hub.state.limits.enabled = True
    hub.state.faults.storm_429 = 12
    hub.sleeps.clear()
    before = clock.time()

    r = fetch_new_orders()
    assert r["inserted"] == 6 and r["fetched"] == 6
    assert hub.state.faults.storm_429 == 0
    assert len(hub.sleeps) >= 4 and clock.time() - before >= sum(hub.sleeps) / 3  # waited out Retry-After
    assert max(c.limiter.peak_in_flight for c in hub.clients) <= 3
    stored = {c for (c,) in q(db_url, "SELECT code FROM orders")}
    assert stored == set(added)


def test_watermark_moves_only_after_the_apply_committed(hub, db_url):
    store, clock = hub.state.store, hub.clock
    fetch_new_orders(since=clock.now())
    w0 = state_of(db_url)[0]
    clock.sleep(3600)
    good = store.add_order()
    bad = store.add_order()
    store.update_order(bad["code"], creationTime="1999-12-31T23:00:00+0100")  # rejected (before 2000): 1 of 2 > 1 %

    with pytest.raises(FetchFailed) as info:
        fetch_new_orders()
    assert info.value.stage == "apply"
    assert state_of(db_url)[0] == w0
    assert q(db_url, "SELECT count(*) FROM orders")[0][0] == 0  # rolled back, the good one too
    (status, error) = q(db_url, "SELECT status, error FROM snapshot_runs WHERE id = %s", info.value.run_id)[0]
    assert status == "failed" and "TooManyRejectsError" in error
    assert q(db_url, "SELECT count(*) FROM snapshot_rejects WHERE run_id = %s", info.value.run_id)[0][0] == 1

    store.update_order(bad["code"], creationTime=bad["creationTime"])
    r = fetch_new_orders()  # the same window again, from the unmoved watermark
    assert r["inserted"] == 2
    assert {c for (c,) in q(db_url, "SELECT code FROM orders")} == {good["code"], bad["code"]}
    assert state_of(db_url)[0] == clock.now().replace(microsecond=0) > w0


def test_watermark_older_than_the_change_log_horizon_warns(hub, db_url):
    clock = hub.clock
    with psycopg.connect(libpq_url(db_url)) as c:
        save_watermark(c, "fetch:orders", clock.now() - timedelta(days=31), {})

    state = fetch_new_orders(return_state=True)
    assert state.is_completed() and state.name == WARNING_STATE and "full snapshot" in state.message
    assert state.result()["deletes_may_be_missed"] is True
    details = state_of(db_url)[1]
    assert details["deletes_may_be_missed"] is True and details["last_horizon_warning"]["run_id"]

    r = fetch_new_orders()  # now within the horizon: no warning, but the last one stays on record
    assert r["deletes_may_be_missed"] is False
    details = state_of(db_url)[1]
    assert details["deletes_may_be_missed"] is False and "last_horizon_warning" in details


# --- customers and products ---------------------------------------------------------------------------


def test_customer_change_feed_with_deletes(hub, db_url):
    store, clock = hub.state.store, hub.clock
    import_snapshot(Entity.customers)
    assert moved(fetch_changes(Entity.customers)) == (0, 0, 0)
    clock.sleep(600)
    changed, deleted = store.keys("customers")[:2]
    new = store.add_customer()
    store.update_customer(changed, remark="changed")
    clock.sleep(60)
    store.delete_customer(deleted)

    r = fetch_changes(Entity.customers)
    assert moved(r) == (1, 1, 1)
    assert q(db_url, "SELECT count(*) FROM customers WHERE guid = %s", new["guid"])[0][0] == 1
    assert q(db_url, "SELECT count(*) FROM customers WHERE guid = %s", deleted)[0][0] == 0
    assert moved(fetch_changes(Entity.customers)) == (0, 0, 0)
    assert state_of(db_url, "customers")[0] == clock.now().replace(microsecond=0)


def test_a_new_customer_with_change_time_null_arrives_through_the_change_feed(hub, db_url):
    """Soak seed 20261209 day 75: a fresh customer whose changeTime is null (the sandbox's 0.3 %) was in
    no change log, so only the nightly full snapshot could bring it, and that night's snapshot failed.
    Shoptet logs a creation as an `edit` (reference §6): the feed must bring it."""
    store, clock = hub.state.store, hub.clock
    import_snapshot(Entity.customers)
    assert moved(fetch_changes(Entity.customers)) == (0, 0, 0)
    clock.sleep(600)
    new = store.add_customer(changeTime=None)
    assert new["changeTime"] is None

    assert moved(fetch_changes(Entity.customers)) == (1, 0, 0)
    assert q(db_url, "SELECT changed_at FROM customers WHERE guid = %s", new["guid"]) == [(None,)]
    assert moved(fetch_changes(Entity.customers)) == (0, 0, 0)


def test_product_change_feed_deletes_products_with_their_variants(hub, db_url):
    store, clock = hub.state.store, hub.clock
    import_snapshot(Entity.products)
    assert moved(fetch_changes("products")) == (0, 0, 0)
    clock.sleep(600)
    changed, deleted = store.keys("products")[:2]
    assert q(db_url, "SELECT count(*) FROM product_variants WHERE product_guid = %s", deleted)[0][0] > 0
    new = store.add_product()
    store.update_product(changed, name="Renamed")
    clock.sleep(60)
    store.delete_product(deleted)

    r = fetch_changes("products")
    assert moved(r) == (1, 1, 1)
    assert q(db_url, "SELECT name FROM products WHERE guid = %s", changed)[0][0] == "Renamed"
    assert q(db_url, "SELECT count(*) FROM products WHERE guid = %s", deleted)[0][0] == 0
    assert q(db_url, "SELECT count(*) FROM product_variants WHERE product_guid = %s", deleted)[0][0] == 0
    n_variants = q(db_url, "SELECT count(*) FROM product_variants WHERE product_guid = %s", new["guid"])[0][0]
    assert n_variants == len(new["variants"])
    assert moved(fetch_changes("products")) == (0, 0, 0)


def test_a_delete_older_than_the_stored_row_is_ignored(hub, db_url):
    """Never roll back: the change log's delete must not remove a row stored with a newer changeTime."""
    from db.sync_state import delete_from_change_log

    import_snapshot(Entity.customers)
    guid, changed_at = q(db_url, "SELECT guid, changed_at FROM customers ORDER BY guid LIMIT 1")[0]
    with psycopg.connect(libpq_url(db_url)) as c:
        assert delete_from_change_log(c, "customers", [(guid, changed_at - timedelta(seconds=1))]) == 0
        assert delete_from_change_log(c, "customers", [(guid, changed_at)]) == 1


# --- pure helpers ---------------------------------------------------------------------------------------


def test_plan_window_rules():
    now = datetime(2026, 10, 2, tzinfo=UTC)
    two_h = timedelta(hours=2)
    w = plan_window(started=now, lookback=two_h, watermark=now - timedelta(hours=1), since=None, newest_mirrored=None)
    assert (w.start, w.basis, w.horizon_exceeded) == (now - timedelta(hours=3), "watermark", False)
    w = plan_window(started=now, lookback=two_h, watermark=None, since=None, newest_mirrored=now - timedelta(days=1))
    assert (w.start, w.basis) == (now - timedelta(days=1) - two_h, "mirror")
    w = plan_window(started=now, lookback=two_h, watermark=now, since=now - timedelta(days=40), newest_mirrored=None)
    assert (w.start, w.basis, w.horizon_exceeded) == (now - timedelta(days=40), "since", True)
    with pytest.raises(NoStartingPoint):
        plan_window(started=now, lookback=two_h, watermark=None, since=None, newest_mirrored=None)


def test_write_details_uses_at_most_three_threads_and_streams():
    lock = threading.Lock()
    active = peak = 0

    def get(key: str):
        nonlocal active, peak
        with lock:
            active += 1
            peak = max(peak, active)
        time.sleep(0.002)
        with lock:
            active -= 1
        return None if key == "gone" else {"code": key}

    out = io.BytesIO()
    keys = [str(i) for i in range(40)] + ["gone"]
    assert write_details(get, iter(keys), out) == (40, 1)
    assert peak <= 3
    assert sorted(orjson.loads(line)["code"] for line in out.getvalue().splitlines()) == sorted(keys[:-1])
