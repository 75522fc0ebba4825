"""A crashed `hub import-file` under ephemeral Prefect (no server): `hub locks release` frees its lock for good.

Every `hub` command without a server starts its own ephemeral Prefect server on the one SQLite database
of PREFECT_HOME: the limits' slot counts live in that database, the leases only in the memory of the
process that made them. So the lease of a killed holder is unknown to the server of `hub locks release`,
and revoking it alone gave nothing back: the slot stayed in use forever (issue 16).

The import is blocked inside its lock on a named pipe (it opens the file only once it holds the lock),
so the kill lands while the lock is held, with no timing guess.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from db import locks as dblocks
from db.connection import libpq_url
from tests.factories import order, write_jsonl

pytestmark = [pytest.mark.slow, pytest.mark.integration]
ROOT = Path(__file__).resolve().parents[2]


def _env(db_url: str, tmp_path: Path) -> dict[str, str]:
    env = {
        **os.environ,
        "HUB_DATABASE_URL": db_url,
        "HUB_HOME": str(tmp_path / "hub-home"),  # no `hub serve` state: each command runs ephemeral Prefect
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PYTHONPATH": str(ROOT),
        "PREFECT_LOGGING_LEVEL": "WARNING",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",  # a busy test machine: the default 20 s is short
    }
    env.pop("PREFECT_API_URL", None)
    return env


def _hub(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "deployments.cli", *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def _wait_for(check, what: str, proc: subprocess.Popen | None = None, seconds: float = 90) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"the import ended before {what}: {proc.communicate()[1][-3000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.1)


def test_sigkilled_import_on_ephemeral_prefect_is_released_and_the_rerun_loads_every_row(db_url, tmp_path):
    env = _env(db_url, tmp_path)
    fifo = tmp_path / "orders.jsonl"
    os.mkfifo(fifo)  # opened by the import only once it holds the lock: it blocks there, locked
    proc = subprocess.Popen(
        [sys.executable, "-m", "deployments.cli", "import-file", "orders", str(fifo)],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    conn = psycopg.connect(libpq_url(db_url), autocommit=True)
    try:

        def holder():
            return next((h for h in dblocks.read_holders(conn).values() if h.pid == proc.pid), None)

        _wait_for(lambda: holder() is not None, "the import to hold its lock", proc)
        name = holder().name
        os.killpg(proc.pid, signal.SIGKILL)  # the whole group: the CLI and its ephemeral Prefect server
        proc.wait(30)
        _wait_for(lambda: dblocks.advisory_lock_backend(conn, name) is None, "the dead session to end")
    finally:
        conn.close()

    rows = [order(str(i)) for i in range(1, 51)]
    f = write_jsonl(tmp_path / "orders.jsonl.gz", rows)
    released = _hub(env, "locks", "release", "orders")
    assert released.returncode == 0, released.stdout + released.stderr
    assert "released" in released.stderr and "1 → 0" in released.stderr

    rerun = _hub(env, "import-file", "orders", str(f), "--wait", "60")
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    with psycopg.connect(libpq_url(db_url)) as c:
        codes = {r[0] for r in c.execute("SELECT code FROM orders")}
    assert codes == {str(i) for i in range(1, 51)}
