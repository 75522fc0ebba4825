"""Job locks: limits repaired or loud (never unlocked), exit code 75, --wait, holders, release."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from dataclasses import replace
from datetime import UTC, datetime

import psutil
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
    res = runner.invoke(
        app, ["import-file", "orders", str(write_jsonl(tmp_path / "o.gz", [order("1")])), "--wait", "30"]
    )
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
        c.execute(
            "INSERT INTO job_locks (name, flow_run_id, host, pid) VALUES (%s, 'crashed', 'gone-host', 1)", (name,)
        )
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


def test_release_frees_a_slot_whose_lease_another_prefect_server_made(env):
    """Issue 16: the holder crashed under its own ephemeral server, so this server never knew its lease.

    Revoking that lease gives nothing back; before the fix `hub locks release` said "released" and the
    slot stayed in use forever (the next import: exit 75, "held by holder unknown").
    """
    name = _name(env, "products")
    acquire_concurrency_slots_with_lease([name], 1, lease_duration=600, strict=True)  # the slot: in the database
    foreign_lease = "2b0c1e7e-6f0e-4a56-9d55-0e1c7f3a9b01"  # made by a server that is gone: unknown here
    with psycopg.connect(libpq_url(env), autocommit=True) as c:
        c.execute(
            "INSERT INTO job_locks (name, flow_run_id, host, pid, lease_id) VALUES (%s, 'crashed', 'gone-host', 1, %s)",
            (name, foreign_lease),
        )
    assert _slots(name) == 1
    res = runner.invoke(app, ["locks", "release", "products"])
    assert res.exit_code == 0, res.output
    assert "released" in res.output and "1 → 0" in res.output
    assert _slots(name) == 0
    with psycopg.connect(libpq_url(env)) as c:
        assert dblocks.read_holder(c, name) is None
    with job_lock("products", url=env, schema="public", wait=0):
        assert _slots(name) == 1


def test_stranded_slot_without_holder_or_session_is_named_and_released(env):
    """A slot in use, no holder recorded, no session holding the advisory lock: the message of the next
    job and `hub locks` name the one command that frees it, and it does."""
    name = _name(env, "customers")
    acquire_concurrency_slots_with_lease([name], 1, lease_duration=600, strict=True)
    row = {r["lock"]: r for r in lock_table(env, "public")}[name]
    assert (row["slots_in_use"], row["holder"], row["advisory_lock"]) == (1, None, None)
    with pytest.raises(LockHeld, match="`hub locks release customers` frees it"):
        with job_lock("customers", url=env, schema="public", wait=0):
            pytest.fail("ran while its slot was in use")
    done = release(env, "public", "customers")
    assert (done.slots_before, done.slots_after) == (1, 0) and "none recorded" in done.how
    assert _slots(name) == 0


def test_release_refuses_while_a_session_holds_the_advisory_lock_and_frees_nothing(env):
    name = _name(env, "products")
    acquire_concurrency_slots_with_lease([name], 1, lease_duration=600, strict=True)
    with dblocks.advisory_lock(env, "public", name, wait_seconds=0, flow_run_id="writer"):
        with psycopg.connect(libpq_url(env), autocommit=True) as c:
            dblocks.forget_holder(c, name)  # no holder row: only the session says a job runs
        with pytest.raises(LockError, match="holds its advisory lock"):
            release(env, "public", "products")
    assert _slots(name) == 1


def test_a_live_holders_lock_held_message_does_not_suggest_release(env, hold):
    hold("orders", "live-run")
    with pytest.raises(LockHeld) as info:
        with job_lock("orders", url=env, schema="public", wait=0):
            pass
    assert "live-run" in str(info.value) and "hub locks release" not in str(info.value)


# --- hold-and-wait (review L6) ----------------------------------------------------------------------------


def test_several_groups_hold_none_while_waiting_for_a_busy_later_one(env, hold):
    """partition-maintenance (orders, db-maintenance) waiting for db-maintenance leaves orders free."""
    stop = hold("db-maintenance", "long-backup")
    waiting, proceed, result = threading.Event(), threading.Event(), {}

    def sleep(seconds: float) -> None:  # the waiter's back-off: the test decides when it retries
        waiting.set()
        proceed.wait(20)

    def maintenance() -> None:
        try:
            with job_lock("orders", "db-maintenance", url=env, schema="public", wait=60, sleep=sleep) as holders:
                result["held"] = [h.name for h in holders]
        except Exception as exc:  # noqa: BLE001 - reported below
            result["error"] = exc

    t = threading.Thread(target=maintenance, daemon=True)
    t.start()
    assert waiting.wait(30), result
    # While it waits, the 15-minute fetch takes orders at once (before the fix: LockHeld, held by maintenance).
    with job_lock("orders", url=env, schema="public", wait=0) as (fetch,):
        assert fetch.name == _name(env, "orders")
    assert _slots(_name(env, "orders")) == 0
    stop.set()  # the backup ends
    proceed.set()
    t.join(30)
    assert result.get("held") == [_name(env, "orders"), _name(env, "db-maintenance")], result


def test_several_groups_give_up_at_the_deadline_naming_the_busy_one(env, hold):
    hold("db-maintenance", "long-backup")
    with pytest.raises(LockHeld, match="db-maintenance is held by flow run long-backup"):
        with job_lock(
            "orders", "db-maintenance", url=env, schema="public", wait=3, sleep=lambda s: time.sleep(min(s, 0.05))
        ):  # 3 s: a loaded box
            pytest.fail("ran without db-maintenance")
    assert _slots(_name(env, "orders")) == 0


@pytest.mark.parametrize("wait", [1.5, 3.0])
def test_a_slow_server_does_not_make_a_free_lock_look_held_at_the_deadline(env, hold, monkeypatch, wait):
    """CI, a loaded box: the retry's timed wait for the free `orders` slot ran out on the round trip, and
    the deadline's message said `orders` was held by an unknown holder; the busy lock was db-maintenance."""
    import flows.locks as locks

    real, waits = locks.prefect_slot, []

    def slow_server(name, slot_wait):
        waits.append(slot_wait)
        if slot_wait and len(waits) > 1:  # after the first answer, a timed wait runs out on a slow server
            time.sleep(slot_wait)
            raise TimeoutError
        return real(name, slot_wait)

    hold("db-maintenance", "long-backup")
    monkeypatch.setattr(locks, "prefect_slot", slow_server)
    with pytest.raises(LockHeld, match="db-maintenance is held by flow run long-backup") as held:
        with job_lock(
            "orders", "db-maintenance", url=env, schema="public", wait=wait, sleep=lambda s: time.sleep(0.05)
        ):
            pytest.fail("ran without db-maintenance")
    assert not held.value.timed_out
    assert all(w == 0.0 or w >= locks.TIMED_WAIT_FLOOR for w in waits)  # a short timed wait is an immediate try
    assert _slots(_name(env, "orders")) == 0


# --- hub instances (issue 8 §1.4) ----------------------------------------------------------------------


def test_two_hub_instances_on_one_prefect_server_do_not_block_or_release_each_other(env, make_db, hold):
    a, b = env, make_db()  # two copies of one template: the same hub_instance row, other databases
    assert instance(a, "public") != instance(b, "public")
    ensure_limits(b, "public")
    hold("orders", "live-on-a")  # a job running on a
    b_orders = limit_name("orders", instance(b, "public"))
    a_orders = limit_name("orders", instance(a, "public"))
    with job_lock("orders", url=b, schema="public", wait=0):  # not blocked by a's holder
        assert _slots(b_orders) == 1
        # Releasing b's lock (no holder recorded on b) must not touch a's slot, held by a live job.
        with pytest.raises(ValueError, match="not a lock of this hub instance"):
            release(b, "public", a_orders)
    release(b, "public", "orders")
    assert _slots(a_orders) == 1
    with pytest.raises(LockHeld):
        with job_lock("orders", url=a, schema="public", wait=0):
            pytest.fail("a's lock was freed by b")


def test_locks_command_shows_the_instance_id(env):
    res = runner.invoke(app, ["locks"])
    assert res.exit_code == 0, res.output
    inst = instance(env, "public")
    assert f"hub instance {inst}" in res.output and f"hub-{inst}-orders" in res.output


def test_bootstrap_creates_this_instances_limits(env):
    res = runner.invoke(app, ["bootstrap"])
    assert res.exit_code == 0, res.output
    assert f"{_name(env, 'orders')}: ok" in res.output
    # The work pool and the partitions due now; a second run changes nothing (idempotent).
    assert "work pool hub-process: " in res.output and "order_items partitions: " in res.output
    again = runner.invoke(app, ["bootstrap"])
    assert again.exit_code == 0, again.output
    assert "work pool hub-process: ok" in again.output and "order_items partitions: ok" in again.output
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        pool = client.read_work_pool("hub-process")
    assert pool.type == "process" and pool.base_job_template["job_configuration"]["command"]


# --- holders: lease and process start time (issue 8 §1.4, §1.11) ----------------------------------------


def test_holder_records_its_lease_and_process_start(env):
    with job_lock("orders", url=env, schema="public", wait=0) as (holder,):
        with psycopg.connect(libpq_url(env)) as c:
            recorded = dblocks.read_holder(c, holder.name)
        assert recorded.lease_id == holder.lease_id and holder.lease_id
        assert recorded.pid == os.getpid()
        assert abs(recorded.pid_started_at.timestamp() - psutil.Process().create_time()) < 1


def test_a_reused_pid_is_not_the_holder(env):
    """The recorded pid runs (it is ours), but it started at another time: a new process got the pid."""
    name = _name(env, "products")
    with psycopg.connect(libpq_url(env), autocommit=True) as c:
        c.execute(
            """INSERT INTO job_locks (name, flow_run_id, host, pid, pid_started_at)
               VALUES (%s, 'crashed', %s, %s, now() - interval '3 days')""",
            (name, socket.gethostname(), os.getpid()),
        )
        holder = dblocks.read_holder(c, name)
        assert dblocks.holder_alive(c, holder) is False
        assert (
            dblocks.holder_alive(
                c, replace(holder, pid_started_at=datetime.fromtimestamp(psutil.Process().create_time(), UTC))
            )
            is True
        )  # the same process: alive
    assert release(env, "public", "products").name == name  # the crashed holder's row does not block release


# --- guard_write (issue 8 §1.3) --------------------------------------------------------------------------


def _write_order_state(url: str, value: str, guards=None) -> None:
    with psycopg.connect(libpq_url(url)) as c, c.transaction():
        dblocks.guard_write(c, guards)
        c.execute("INSERT INTO settings_probe_for_locks (v) VALUES (%s)", (value,))


@pytest.fixture
def probe_table(env):
    with psycopg.connect(libpq_url(env), autocommit=True) as c:
        c.execute("CREATE TABLE settings_probe_for_locks (v text)")
    return env


def _probe_rows(url: str) -> list[str]:
    with psycopg.connect(libpq_url(url)) as c:
        return [r[0] for r in c.execute("SELECT v FROM settings_probe_for_locks ORDER BY v")]


def test_guard_write_is_a_no_op_without_a_job_lock(probe_table):
    assert dblocks.active_guards() == ()
    _write_order_state(probe_table, "free")
    assert _probe_rows(probe_table) == ["free"]


def test_guard_write_takes_the_write_key_inside_the_transaction(probe_table):
    with job_lock("orders", url=probe_table, schema="public", wait=0):
        (guard,) = dblocks.active_guards()
        with psycopg.connect(libpq_url(probe_table)) as c, c.transaction():
            dblocks.guard_write(c)
            held = c.execute(
                """SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()
                     AND classid = %s::oid AND objid = (%s::int4)::oid""",
                (dblocks.WRITE_NAMESPACE, guard.key),
            ).fetchone()[0]
            assert held == 1
        with psycopg.connect(libpq_url(probe_table), autocommit=True) as c:
            with pytest.raises(RuntimeError, match="inside the writing transaction"):
                dblocks.guard_write(c)
    assert dblocks.active_guards() == ()


def test_writers_of_two_holders_of_one_lock_never_interleave(probe_table):
    """A writer that passed its check keeps the write key to its commit: a later holder's writer waits."""
    with job_lock("orders", url=probe_table, schema="public", wait=0) as (holder,):
        guards = dblocks.active_guards()
        old = psycopg.connect(libpq_url(probe_table))
        old.execute("INSERT INTO settings_probe_for_locks VALUES ('old')")
        dblocks.guard_write(old, guards)  # checked while the lock session was alive
        with psycopg.connect(libpq_url(probe_table), autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (holder.backend_pid,))
        with dblocks.advisory_lock(probe_table, "public", holder.name, wait_seconds=10, flow_run_id="next"):
            new_guards = dblocks.active_guards()[-1:]
            with psycopg.connect(libpq_url(probe_table)) as c:
                c.execute("SET lock_timeout = '300ms'")
                with pytest.raises(psycopg.errors.LockNotAvailable):
                    with c.transaction():
                        dblocks.guard_write(c, new_guards)
                old.commit()
                old.close()
                _write_order_state(probe_table, "new", new_guards)
            # The old holder's next transaction is refused: its session is gone.
            with pytest.raises(dblocks.LockLost, match="was lost"):
                _write_order_state(probe_table, "old-again", guards)
    assert _probe_rows(probe_table) == ["new", "old"]


def test_lock_session_has_keepalives_and_no_idle_timeout(env):
    with dblocks.lock_session(env, "public") as c:
        params = c.info.get_parameters()
        assert params["keepalives"] == "1" and int(params["keepalives_idle"]) <= 120
        assert c.execute("SHOW idle_session_timeout").fetchone()[0] == "0"


def test_a_dead_lock_session_does_not_fail_a_finished_job(env, caplog):
    caplog.set_level(logging.WARNING, logger="db.locks")
    with job_lock("customers", url=env, schema="public", wait=0) as (holder,):
        with psycopg.connect(libpq_url(env), autocommit=True) as c:
            c.execute("SELECT pg_terminate_backend(%s)", (holder.backend_pid,))
    # No exception: the work done inside committed under the lock; the clean-up just warns.
    assert any("session was gone" in r.getMessage() for r in caplog.records)
    with job_lock("customers", url=env, schema="public", wait=0):  # and the next run takes the lock
        pass


def test_guards_reach_prefect_task_runs_of_a_locked_flow(probe_table):
    from prefect import flow, task

    @task
    def write(value: str) -> int:
        _write_order_state(probe_table, value)
        return len(dblocks.active_guards())

    @flow
    def locked_flow() -> list[int]:
        with job_lock("orders", url=probe_table, schema="public", wait=0):
            return [write("direct"), write.submit("submitted").result()]

    assert locked_flow() == [1, 1]
    assert _probe_rows(probe_table) == ["direct", "submitted"]


# --- private Prefect names (issue 8 §1.12) ----------------------------------------------------------------

PRIVATE_PREFECT_NAMES = [
    ("prefect.concurrency._asyncio", "ConcurrencySlotAcquisitionError"),
    ("prefect.concurrency._sync", "acquire_concurrency_slots_with_lease"),
    ("prefect.concurrency._leases", "maintain_concurrency_lease"),
]


@pytest.mark.parametrize(("module", "attr"), PRIVATE_PREFECT_NAMES)
def test_private_prefect_names_still_exist(module, attr):
    """flows/locks.py needs these (the public ``concurrency()`` hides the lease id); pyproject pins prefect."""
    import importlib
    import inspect

    from prefect import __version__

    try:
        obj = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        pytest.fail(
            f"prefect {__version__} no longer has {module}.{attr} ({exc}). flows/locks.py uses it to take "
            "a concurrency slot with a known lease id: port prefect_slot (flows/prefect_slots.py, and the LockHeld "
            "mapping) to the new API, then move the pin in pyproject.toml to the tested minor version."
        )
    if attr == "acquire_concurrency_slots_with_lease":
        params = inspect.signature(obj).parameters
        missing = {"timeout_seconds", "max_retries", "lease_duration", "strict"} - set(params)
        assert not missing, f"prefect {__version__}: {module}.{attr} lost parameters {missing}; port prefect_slot"


@pytest.mark.parametrize(
    ("key", "raw_sql", "params"),
    [
        # The keys the three callers took by hand before db.locks had one helper: the same locks.
        (
            dblocks.job_key("orders"),
            "pg_advisory_lock(%s, hashtext(current_schema() || ':' || %s))",
            (dblocks.LOCK_NAMESPACE, "orders"),
        ),
        (dblocks.AdvisoryKey.per_schema(0x5B0C), "pg_advisory_lock(%s, hashtext(current_schema()))", (0x5B0C,)),
        (dblocks.AdvisoryKey.bigint(0x5B07E7), "pg_advisory_lock(%s::int8)", (0x5B07E7,)),
        (dblocks.AdvisoryKey.bigint(-(2**63)), "pg_advisory_lock(%s::int8)", (-(2**63),)),
        (
            dblocks.AdvisoryKey.pair(dblocks.WRITE_NAMESPACE, -7),
            "pg_advisory_lock(%s, %s)",
            (dblocks.WRITE_NAMESPACE, -7),
        ),
    ],
)
def test_advisory_keys_are_the_locks_taken_by_hand(db_url, key, raw_sql, params):
    with psycopg.connect(libpq_url(db_url), autocommit=True) as a, psycopg.connect(libpq_url(db_url)) as b:
        a.execute(f"SELECT {raw_sql}", params)
        assert dblocks.lock_holder_pid(b, key) == a.info.backend_pid
        assert not dblocks.try_lock(b, key)
        with pytest.raises(dblocks.LockError):
            with dblocks.session_lock(b, key, wait=False):
                pass
        a.execute(f"SELECT {raw_sql.replace('pg_advisory_lock', 'pg_advisory_unlock')}", params)
        assert dblocks.lock_holder_pid(b, key) is None
        with dblocks.session_lock(b, key, wait=False):
            assert dblocks.lock_holder_pid(a, key) == b.info.backend_pid
        assert dblocks.lock_holder_pid(a, key) is None
