"""Job lock faults (issue 8 §3.7, §3.8, §3.10): whatever happens to a lock, no job runs or commits unlocked.

- two processes run the same locked job at once: one runs, the other exits 75 and writes nothing;
- the job's Prefect limit is missing, inactive or changed to limit 2 while a job runs: repaired or
  refused, never run unlocked;
- the lock session is killed while a job runs: its next writing transaction fails with LockLost and
  commits nothing; a rerun completes;
- a job process is killed with SIGKILL while holding its lock: `hub locks release` revokes its lease
  and frees the slot, a rerun takes the lock, and the dead holder's lease can never give back the new
  holder's slot.

Rows are compared with the file applied (order codes), never with the loader's counters. Prefect runs
under the test harness (an ephemeral server: a killed holder's slot never comes back by itself).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from uuid import UUID

import psycopg
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitUpdate
from typer.testing import CliRunner

from db import locks as dblocks
from db.connection import libpq_url
from db.sync_state import get_state, save_watermark
from deployments.cli import app
from flows.locks import LockError, LockHeld, LockLost, ensure_limits, instance, job_lock, limit_name, limit_status
from tests.factories import order, write_jsonl
from tests.integration.conftest import hub_env  # noqa: F401 - fixtures used below

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
HOLDER = Path(__file__).with_name("lock_holder.py")
runner = CliRunner()


@pytest.fixture(scope="module", autouse=True)
def harness(prefect_harness):  # noqa: F811
    yield


@pytest.fixture
def env(hub_env):  # noqa: F811
    ensure_limits(hub_env, "public")
    return hub_env


def _name(url: str, group: str) -> str:
    return limit_name(group, instance(url, "public"))


def _slots(name: str) -> int:
    return limit_status(name).active_slots


def _order_codes(url: str) -> set[str]:
    with psycopg.connect(libpq_url(url)) as c:
        return {r[0] for r in c.execute("SELECT code FROM orders")}


def _process_env() -> dict[str, str]:
    from prefect.settings import PREFECT_API_URL

    return {
        **os.environ,
        "PREFECT_API_URL": PREFECT_API_URL.value(),
        "PYTHONPATH": str(ROOT),
        "PREFECT_LOGGING_LEVEL": "WARNING",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }


def _start_holder(url: str, group: str) -> tuple[subprocess.Popen, dict]:
    pipe = subprocess.PIPE
    proc = subprocess.Popen(
        [sys.executable, str(HOLDER), url, group],
        env=_process_env(),
        cwd=ROOT,
        stdin=pipe,
        stdout=pipe,
        stderr=pipe,
        text=True,
    )
    line = proc.stdout.readline()
    if not line:
        proc.kill()
        pytest.fail(f"the holder process did not take the lock: {proc.communicate(timeout=30)[1][-3000:]}")
    return proc, json.loads(line)


def _hub(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "deployments.cli", *args],
        env=_process_env(),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def holder_thread(env):
    """Hold a lock in a thread of this process (a job running) until the test lets go."""
    started, stop, threads = threading.Event(), threading.Event(), []

    def run(group: str) -> None:
        with job_lock(group, url=env, schema="public", wait=None, flow_run_id="running-job"):
            started.set()
            stop.wait(60)

    def start(group: str) -> threading.Event:
        t = threading.Thread(target=run, args=(group,), daemon=True)
        t.start()
        threads.append(t)
        assert started.wait(30)
        return stop

    yield start
    stop.set()
    for t in threads:
        t.join(20)


# --- §3.8: two processes, one job ---------------------------------------------------------------------------


def test_two_processes_running_the_same_locked_job_only_one_runs(env, tmp_path):
    f = write_jsonl(tmp_path / "o.gz", [order("1"), order("2")])
    holder, info = _start_holder(env, "orders")  # a job process running the orders import
    try:
        assert info["name"] == _name(env, "orders")
        second = _hub("import-file", "orders", str(f))
        assert second.returncode == 75, second.stderr
        assert f"{info['name']} is held by flow run" in second.stderr and f"pid {info['pid']}" in second.stderr
        assert _order_codes(env) == set()  # the second process wrote nothing
    finally:
        holder.stdin.close()
        assert holder.wait(60) == 0, holder.stderr.read()[-3000:]
    assert _slots(info["name"]) == 0
    rerun = _hub("import-file", "orders", str(f))
    assert rerun.returncode == 0, rerun.stderr
    assert _order_codes(env) == {"1", "2"}


# --- §3.8: missing, inactive, changed limit while a job runs ------------------------------------------------


@pytest.mark.parametrize("damage", ["missing", "inactive", "limit 2"])
def test_a_damaged_limit_is_refused_or_repaired_never_run_unlocked(env, holder_thread, damage):
    name = _name(env, "customers")
    stop = holder_thread("customers")
    with get_client(sync_client=True) as c:
        if damage == "missing":
            c.delete_global_concurrency_limit_by_name(name)
        else:
            c.update_global_concurrency_limit(
                name,
                GlobalConcurrencyLimitUpdate(active=False)
                if damage == "inactive"
                else GlobalConcurrencyLimitUpdate(limit=2),
            )
    ran = []
    with pytest.raises(LockError, match="hub bootstrap"):
        with job_lock("customers", url=env, schema="public", wait=0, repair=False):
            ran.append("unrepaired")
    # Repaired, and still refused: the running job holds the slot, or (a recreated limit has no slots
    # in use) its advisory lock.
    with pytest.raises(LockHeld, match="running-job"):
        with job_lock("customers", url=env, schema="public", wait=0, repair=True):
            ran.append("repaired")
    assert ran == []
    status = limit_status(name)
    assert (status.exists, status.active, status.limit) == (True, True, 1)
    stop.set()
    with job_lock("customers", url=env, schema="public", wait=10, repair=True):
        assert _slots(name) == 1  # the next job runs holding a real slot


# --- §3.10: the lock session is killed while the job runs ----------------------------------------------------


def test_a_killed_lock_session_stops_the_jobs_next_writing_transaction(env):
    when = datetime(2026, 11, 1, tzinfo=UTC)
    with pytest.raises(LockLost, match="was lost"):
        with job_lock("orders", url=env, schema="public", wait=0) as (holder,):
            with psycopg.connect(libpq_url(env)) as c, c.transaction():
                save_watermark(c, "fetch:orders", when, {"run": 1})  # committed under the lock
            with psycopg.connect(libpq_url(env), autocommit=True) as admin:
                admin.execute("SELECT pg_terminate_backend(%s)", (holder.backend_pid,))
            with psycopg.connect(libpq_url(env)) as c, c.transaction():
                save_watermark(c, "fetch:orders", datetime(2026, 11, 2, tzinfo=UTC), {"run": 2})
    with psycopg.connect(libpq_url(env)) as c:
        state = get_state(c, "fetch:orders")
    assert (state.watermark, state.details) == (when, {"run": 1})  # the second transaction committed nothing


def test_lock_session_killed_during_an_import_fails_it_with_nothing_applied_and_a_rerun_completes(env, tmp_path):
    from flows.entities import Entity
    from flows.snapshot import import_file

    orders = [order(str(i)) for i in range(3000)]
    f = write_jsonl(tmp_path / "o.gz", orders)
    name = _name(env, "orders")
    killed = threading.Event()

    def kill_the_lock_session_once_held() -> None:
        with psycopg.connect(libpq_url(env), autocommit=True) as c:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                row = c.execute("SELECT backend_pid FROM job_locks WHERE name = %s", (name,)).fetchone()
                if row:
                    c.execute("SELECT pg_terminate_backend(%s)", (row[0],))
                    killed.set()
                    return
                time.sleep(0.005)

    killer = threading.Thread(target=kill_the_lock_session_once_held, daemon=True)
    killer.start()
    with pytest.raises(LockLost):
        import_file(Entity.orders, f)
    killer.join(10)
    assert killed.is_set()
    assert _order_codes(env) == set()
    with psycopg.connect(libpq_url(env)) as c:
        assert c.execute("SELECT status FROM snapshot_runs").fetchall() == [("failed",)]
    import_file(Entity.orders, f)
    assert _order_codes(env) == {o["code"] for o in orders}


# --- §3.7: a job killed with SIGKILL while it holds its lock -------------------------------------------------


def test_sigkilled_holder_is_released_and_its_lease_revoked_then_a_rerun_takes_the_lock(env, tmp_path):
    holder, info = _start_holder(env, "orders")
    name, dead_lease = info["name"], UUID(info["lease_id"])
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait(30)
    with psycopg.connect(libpq_url(env), autocommit=True) as c:
        deadline = time.monotonic() + 30  # the server ends the dead session as soon as it sees the socket close
        while dblocks.advisory_lock_backend(c, name) is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert dblocks.read_holder(c, name).lease_id == str(dead_lease)
        assert dblocks.holder_alive(c, dblocks.read_holder(c, name)) is False
    assert _slots(name) == 1  # orphaned: an ephemeral server never takes it back
    f = write_jsonl(tmp_path / "o.gz", [order("1")])
    assert runner.invoke(app, ["import-file", "orders", str(f)]).exit_code == 75

    res = runner.invoke(app, ["locks", "release", "orders"])
    assert res.exit_code == 0, res.output
    assert _slots(name) == 0
    with get_client(sync_client=True) as client:
        with pytest.raises(Exception, match="410|404|[Nn]ot [Ff]ound|[Gg]one"):
            client.renew_concurrency_lease(dead_lease, 600)  # revoked: the dead holder cannot renew it

    res = runner.invoke(app, ["import-file", "orders", str(f)])
    assert res.exit_code == 0, res.output
    assert _order_codes(env) == {"1"}
    with job_lock("orders", url=env, schema="public", wait=0):
        # A late release of the dead holder's lease (the repossessor, a zombie) must not free this slot.
        with get_client(sync_client=True) as client:
            client.release_concurrency_slots_with_lease(dead_lease)
        assert _slots(name) == 1
