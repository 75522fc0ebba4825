"""The deployments of prefect.yaml on a real Prefect server with two process workers and the sandbox shop.

One test, in steps that build on each other (a server, workers and a shop are expensive to start):
  1. `hub bootstrap`, `hub deploy` of the deployments used here, two workers on hub-process, the sandbox;
  2. two runs of deployments taking the orders lock (the orders snapshot and fetch-new-orders), triggered at
     the same moment, run concurrently on the workers but their locked sections never overlap; the
     snapshot lands the shop's orders;
  3. a worker is killed -9 (with its flow run: the machine died) while the run holds the orders lock: the
     Prefect slot stays taken until the lease (60 s here) expires, then a new run takes it and completes
     with the right rows.
Everything started is stopped at the end, and the test checks that no process is left.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import psutil
import psycopg
import pytest

from db.connection import libpq_url
from db.locks import holder_alive, read_holder
from deployments.prefect_server import stop_process
from flows.locks import instance, limit_name

pytestmark = [pytest.mark.slow, pytest.mark.integration]

ROOT = Path(__file__).resolve().parents[2]
ORDERS = 40
LEASE = 60  # Prefect's minimum lease: the slot of a killed holder comes back after about 60-75 s
TOKEN = "e2e-private-token"
HUB = [sys.executable, "-m", "deployments.cli"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Api:
    """The few Prefect REST calls the test needs (plain HTTP: this process's Prefect settings stay untouched)."""

    def __init__(self, url: str) -> None:
        self.http = httpx.Client(base_url=url, timeout=30)

    def call(self, method: str, path: str, **kw) -> dict:
        """One request; a 503 (the SQLite server busy on a loaded machine) is retried as Prefect's client does."""
        for attempt in range(6):
            resp = self.http.request(method, path, **kw)
            if resp.status_code != 503 or attempt == 5:
                return resp.raise_for_status().json() if resp.content else {}
            time.sleep(1 + attempt)
        raise AssertionError("unreachable")

    def run(self, deployment: str, **parameters) -> str:
        dep = self.call("GET", f"/deployments/name/{deployment}")
        return self.call("POST", f"/deployments/{dep['id']}/create_flow_run", json={"parameters": parameters})["id"]

    def flow_run(self, run_id: str) -> dict:
        return self.call("GET", f"/flow_runs/{run_id}")

    def wait(self, run_id: str, timeout: float = 180) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            fr = self.flow_run(run_id)
            if fr["state_type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
                return fr
            assert time.monotonic() < deadline, f"flow run {run_id} still {fr['state_type']} after {timeout} s"
            time.sleep(1)

    def active_slots(self, limit: str) -> int:
        return self.call("GET", f"/v2/concurrency_limits/{limit}")["active_slots"]


def _hub(env: dict, *args: str, timeout: float = 300) -> str:
    proc = subprocess.run([*HUB, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"hub {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


def _status(env: dict) -> tuple[dict, int]:
    proc = subprocess.run([*HUB, "status", "--json"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    return json.loads(proc.stdout), proc.returncode


def _spawn(cmd: list[str], env: dict, log: Path) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen(
            cmd, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip


def _wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            httpx.get(url, timeout=2)
            return
        except httpx.HTTPError:
            pass
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.3)


def _query(db: str, q: str, *params):
    with psycopg.connect(libpq_url(db)) as conn:
        return conn.execute(q, params).fetchall()


def _runs(db: str, flow_run_ids: list[str]) -> list[tuple]:
    return _query(
        db,
        "SELECT flow_run_id, status, started_at, finished_at FROM snapshot_runs WHERE flow_run_id = ANY(%s)"
        " ORDER BY started_at",
        flow_run_ids,
    )


def _orders_rows(db: str) -> tuple[int, int]:
    return _query(db, "SELECT count(*), count(*) FILTER (WHERE EXISTS "
                  "(SELECT 1 FROM order_items i WHERE i.order_code = o.code)) FROM orders o")[0]  # fmt: skip


@pytest.mark.timeout(600)  # about 2-3 minutes; a lease of 60 s must expire in it
def test_deployments_on_two_workers_keep_the_locks(prefect_server, db_url, tmp_path):
    started: list[subprocess.Popen] = []
    sandbox_port = _free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "HUB_"))},
        "PREFECT_API_URL": prefect_server,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "PREFECT_WORKER_QUERY_SECONDS": "2",  # runs start soon after they are created
        "HUB_HOME": str(tmp_path / "home"),
        "HUB_DATABASE_URL": db_url,
        "HUB_CHECKOUT": str(ROOT),
        "HUB_SHOPTET_BASE_URL": f"http://127.0.0.1:{sandbox_port}",
        "HUB_SHOPTET_TOKEN": TOKEN,
        "HUB_WEBHOOK_URL": "https://hub.invalid/shoptet/job-finished",  # the sandbox never calls it; we poll
        "HUB_LOCK_LEASE_SECONDS": str(LEASE),
        "PYTHONPATH": str(ROOT),
    }
    api = Api(prefect_server)
    t0 = time.monotonic()

    def phase(name: str) -> None:
        print(f"[e2e] {name}: {time.monotonic() - t0:.0f} s", flush=True)

    orders_lock = limit_name("orders", instance(db_url, "public"))
    try:
        # --- 1. the sandbox, two workers (starting while the hub bootstraps and deploys) ----------------
        sandbox_log = tmp_path / "sandbox.log"
        sandbox = _spawn(
            [*HUB, "sandbox", "--port", str(sandbox_port), "--token", TOKEN, "--orders", str(ORDERS)]
            + ["--job-seconds", "15"],  # a snapshot holds its lock that long: runs contend for it
            env,
            sandbox_log,
        )
        started.append(sandbox)
        for i in (1, 2):
            started.append(
                _spawn(
                    [sys.executable, "-m", "prefect", "worker", "start", "--pool", "hub-process", "--type", "process"]
                    + ["--name", f"w{i}"],
                    env,
                    tmp_path / f"worker{i}.log",
                )
            )
        out = _hub(env, "bootstrap")
        assert f"{orders_lock}: created" in out and "work pool hub-process: " in out
        _hub(env, "deploy", "--name", "orders-full-snapshot", "--name", "fetch-new-orders")
        _wait_http(f"http://127.0.0.1:{sandbox_port}/api/eshop", sandbox, sandbox_log)

        phase("set up")

        # --- 2. two deployments taking the orders lock, run at the same moment; the snapshot lands data ---
        since = (datetime.now(UTC) - timedelta(days=2)).isoformat()
        a = api.run("import-snapshot/orders-full-snapshot", lock_wait=None)
        b = api.run("fetch-new-orders/fetch-new-orders", lock_wait=None, since=since)
        ra, rb = api.wait(a), api.wait(b)
        assert (ra["state_type"], rb["state_type"]) == ("COMPLETED", "COMPLETED"), (ra["state"], rb["state"])
        spans = _runs(db_url, [a, b])
        assert len(spans) == 2 and all(s[1] == "succeeded" for s in spans), spans
        (_, _, in1, out1), (_, _, in2, out2) = spans
        assert out1 <= in2, f"locked sections overlapped: {spans}"
        assert _orders_rows(db_url) == (ORDERS, ORDERS)  # every order of the shop, each with its items
        # Which worker claims which run first is up to them: the fast fetch may finish before the snapshot
        # starts. So once more with the contention certain: the fetch is started while the snapshot holds
        # the lock, and must wait for it.
        c = api.run("import-snapshot/orders-full-snapshot", lock_wait=None)
        _wait_for_holder(db_url, orders_lock, c)
        d = api.run("fetch-new-orders/fetch-new-orders", lock_wait=None, since=since)
        rc, rd = api.wait(c), api.wait(d)
        assert (rc["state_type"], rd["state_type"]) == ("COMPLETED", "COMPLETED"), (rc["state"], rd["state"])
        (_, _, in3, out3), (_, _, in4, _) = _runs(db_url, [c, d])
        assert out3 <= in4, "the waiting run's locked section began before the holder's ended"
        assert datetime.fromisoformat(rd["start_time"]) < out3, "the fetch did not run while the lock was held"

        phase("contention")

        # --- 3. kill -9 a worker while its run holds the lock ------------------------------------------
        victim = api.run("import-snapshot/orders-full-snapshot")
        holder = _wait_for_holder(db_url, orders_lock, victim)
        run_process = psutil.Process(holder.pid)
        worker = next(p for p in run_process.parents() if p.pid in {w.pid for w in started[1:]})
        killed_at = time.time()
        for p in [worker, *worker.children(recursive=True)]:  # the machine died: worker and its run at once
            p.kill()
        psutil.wait_procs([worker, run_process], timeout=10)
        assert api.active_slots(orders_lock) == 1, "the dead run's slot is held until its lease expires"
        # The failure as the server and the database see it: Prefect still thinks the run is running
        # (a self-hosted server marks no zombie run Crashed on its own), its snapshot run never finished.
        assert api.flow_run(victim)["state_type"] == "RUNNING"
        with psycopg.connect(libpq_url(db_url)) as conn:
            dead = read_holder(conn, orders_lock)
            assert dead.flow_run_id == victim and not holder_alive(conn, dead), "recorded holder, known dead"
        # `hub status` reports it for a monitor: exit 2, the orders lock held by a dead holder.
        report, code = _status(env)
        assert code == 2 and report["level"] == "fail", report
        locks = next(c for c in report["checks"] if c["name"] == "locks")
        (held,) = [x for x in locks["data"]["items"] if x["lock"] == orders_lock]
        assert (held["level"], held["holder_alive"]) == ("fail", False), held
        # An operator (or an automation) marks the dead run Crashed, which frees its deployment's slot.
        api.call(
            "POST",
            f"/flow_runs/{victim}/set_state",
            json={"state": {"type": "CRASHED", "message": "worker killed (e2e test)"}, "force": False},
        )
        again = api.run("import-snapshot/orders-full-snapshot", lock_wait=None)
        done = api.wait(again, timeout=LEASE + 120)
        assert done["state_type"] == "COMPLETED", done["state"]
        ((_, status, took_lock_at, _),) = _runs(db_url, [again])
        assert status == "succeeded"
        assert took_lock_at.timestamp() >= killed_at + LEASE - 10, "the lock was free before the lease expired"
        assert api.active_slots(orders_lock) == 0
        assert _orders_rows(db_url) == (ORDERS, ORDERS)
        phase("crash recovery")
    finally:
        pids = set()
        for proc in started:
            try:
                pids |= {proc.pid, *(c.pid for c in psutil.Process(proc.pid).children(recursive=True))}
            except psutil.NoSuchProcess:
                pass
            stop_process(proc)
    left = [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    assert left == [], f"processes left behind: {left}"


def _wait_for_holder(db: str, lock: str, flow_run_id: str, timeout: float = 120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with psycopg.connect(libpq_url(db)) as conn:
            holder = read_holder(conn, lock)
        if holder and holder.flow_run_id == flow_run_id:
            return holder
        time.sleep(0.2)
    raise AssertionError(f"flow run {flow_run_id} never held {lock}")
