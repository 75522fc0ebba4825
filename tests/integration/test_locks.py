"""Job locks: limits repaired or loud (never unlocked), exit code 75, --wait, holders, release."""

from __future__ import annotations

import logging
import threading
import time

import psycopg
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitUpdate
from prefect.concurrency._sync import acquire_concurrency_slots_with_lease
from typer.testing import CliRunner

from db import locks as dblocks
from db.connection import libpq_url
from deployments.cli import app
from flows.locks import (
    LockError,
    LockHeld,
    ensure_limits,
    instance,
    job_lock,
    limit_name,
    limit_status,
    lock_table,
    release,
)
from tests.factories import order, write_jsonl

pytestmark = pytest.mark.integration
runner = CliRunner()


@pytest.fixture(scope="module", autouse=True)
def harness(prefect_harness):
    yield


@pytest.fixture
def env(hub_env):
    ensure_limits(hub_env, "public")
    return hub_env


def _name(env: str, group: str) -> str:
    return limit_name(group, instance(env, "public"))


@pytest.fixture
def hold(env):
    """Hold a lock from another thread until the test lets go."""
    started, stop, threads = threading.Event(), threading.Event(), []

    def run(group: str, flow_run_id: str | None) -> None:
        with job_lock(group, url=env, schema="public", wait=None, flow_run_id=flow_run_id):
            started.set()
            stop.wait(30)

    def start(group: str = "orders", flow_run_id: str | None = "run-under-test") -> threading.Event:
        t = threading.Thread(target=run, args=(group, flow_run_id), daemon=True)
        t.start()
        threads.append(t)
        assert started.wait(20)
        return stop

    yield start
    stop.set()
    for t in threads:
        t.join(10)


def _slots(name: str) -> int:
    return limit_status(name).active_slots


def test_bootstrap_creates_then_reports_ok_then_repairs(env):
    with get_client(sync_client=True) as c:
        c.delete_global_concurrency_limit_by_name(_name(env, "products"))
        c.update_global_concurrency_limit(_name(env, "customers"), GlobalConcurrencyLimitUpdate(active=False, limit=3))
    report = ensure_limits(env, "public")
    assert report[_name(env, "products")] == "created"
    assert report[_name(env, "customers")] == "repaired"
    assert set(ensure_limits(env, "public").values()) == {"ok"}
    assert all(limit_status(_name(env, g)).healthy for g in ("products", "customers"))


@pytest.mark.parametrize("damage", ["delete", "deactivate"])
def test_missing_or_inactive_limit_fails_loudly_or_is_repaired_never_unlocked(env, damage, caplog):
    name = _name(env, "customers")
    with get_client(sync_client=True) as c:
        if damage == "delete":
            c.delete_global_concurrency_limit_by_name(name)
        else:
            c.update_global_concurrency_limit(name, GlobalConcurrencyLimitUpdate(active=False))
    ran = []
    with pytest.raises(LockError, match="hub bootstrap"):
        with job_lock("customers", url=env, schema="public", repair=False):
            ran.append(True)
    assert ran == []
    caplog.set_level(logging.INFO, logger="flows.locks")
    with job_lock("customers", url=env, schema="public", repair=True):
        assert _slots(name) == 1  # the body runs holding a real slot
    assert limit_status(name).healthy and _slots(name) == 0
    # A limit someone deactivated is worth a warning; a missing one is a new Prefect server's normal state.
    (record,) = [r for r in caplog.records if name in r.getMessage()]
    assert record.levelno == (logging.INFO if damage == "delete" else logging.WARNING)


def test_held_lock_exits_75_naming_the_holder(env, hold, tmp_path):
    hold("orders", "run-under-test")
    f = write_jsonl(tmp_path / "o.gz", [order("1")])
    res = runner.invoke(app, ["import-file", "orders", str(f)])
    assert res.exit_code == 75, res.output
    assert f"{_name(env, 'orders')} is held by flow run run-under-test" in res.output and "pid" in res.output

    t = time.monotonic()
    res = runner.invoke(app, ["import-file", "orders", str(f), "--wait", "1.5"])
    assert res.exit_code == 75 and time.monotonic() - t >= 1.5
    assert "after waiting 1.5 s" in res.output
    with psycopg.connect(libpq_url(env)) as c:
        assert c.execute("SELECT count(*) FROM orders").fetchone()[0] == 0


def test_wait_succeeds_once_the_holder_is_done(env, hold, tmp_path):
    stop = hold("orders")
    threading.Timer(1.0, stop.set).start()
    res = runner.invoke(app, ["import-file", "orders", str(write_jsonl(tmp_path / "o.gz", [order("1")])),
                              "--wait", "30"])
    assert res.exit_code == 0, res.output


def test_other_groups_do_not_exclude_each_other(env, hold):
    hold("orders")
    with job_lock("customers", "products", url=env, schema="public", wait=0) as holders:
        assert [h.name for h in holders] == [_name(env, "customers"), _name(env, "products")]


def test_advisory_lock_keeps_writers_apart_when_prefect_lost_the_slot(env):
    # A writer whose Prefect slot was lost (lease expired, server restarted) still holds the advisory lock.
    with dblocks.advisory_lock(env, "public", _name(env, "orders"), wait_seconds=0, flow_run_id="old-writer"):
        with pytest.raises(LockHeld, match="old-writer"):
            with job_lock("orders", url=env, schema="public", wait=0):
                pytest.fail("ran while another writer held the advisory lock")
    assert _slots(_name(env, "orders")) == 0  # the Prefect slot taken meanwhile was given back


def test_locks_table_and_release(env, hold):
    stop = hold("customers", "live-run")
    rows = {r["lock"]: r for r in lock_table(env, "public")}
    row = rows[_name(env, "customers")]
    assert (row["exists"], row["active"], row["slots_in_use"], row["holder_alive"]) == (True, True, 1, True)
    assert "live-run" in row["holder"]
    with pytest.raises(LockHeld):
        release(env, "public", "customers")
    res = runner.invoke(app, ["locks", "release", "customers"])
    assert res.exit_code == 75 and "refusing" in res.output
    stop.set()


def test_release_frees_a_slot_orphaned_by_a_crashed_holder(env):
    name = _name(env, "products")
    # A holder that died without releasing: its slot stays taken (ephemeral server: never reclaimed).
    acquire_concurrency_slots_with_lease([name], 1, lease_duration=600, strict=True)
    with psycopg.connect(libpq_url(env), autocommit=True) as c:
        c.execute("INSERT INTO job_locks (name, flow_run_id, host, pid) VALUES (%s, 'crashed', 'gone-host', 1)",
                  (name,))
    assert _slots(name) == 1
    with pytest.raises(LockHeld):
        with job_lock("products", url=env, schema="public", wait=0):
            pass
    rows = {r["lock"]: r for r in lock_table(env, "public")}
    assert rows[name]["holder_alive"] is False
    res = runner.invoke(app, ["locks", "release", "products"])
    assert res.exit_code == 0, res.output
    assert _slots(name) == 0
    with job_lock("products", url=env, schema="public", wait=0):
        pass
