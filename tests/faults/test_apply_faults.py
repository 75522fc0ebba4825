"""Faults around one apply: bad files, bad lines, refused deletes, a broken database session, a killed loader.

After each fault the tables are compared with the file that was applied (order codes and their item
counts), never with the loader's own counters: 0 rows lost, 0 duplicated.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import psutil
import psycopg
import pytest

from db.connection import connect, libpq_url
from db.dates import DateWindow
from db.loader import ApplyOptions, MassDeleteRefusedError, TooManyRejectsError, apply_snapshot_file
from db.partitions.rollover import existing_partitions
from db.runs import start_run
from tests.factories import customer, order, product, write_jsonl

pytestmark = pytest.mark.integration

KEYS = {"orders": "code", "customers": "guid", "products": "guid"}


def new_run(db_url: str, entity: str = "orders", full: bool = False) -> int:
    with connect(db_url) as c:
        return start_run(c, entity, source="file", full=full)


def apply(db_url: str, entity: str, path: Path, **kw):
    progress = kw.pop("progress", None)
    run_id = new_run(db_url, entity, kw.get("full", False))
    return apply_snapshot_file(db_url, entity, path, run_id=run_id, options=ApplyOptions(**kw), progress=progress)


def stored_orders(conn: psycopg.Connection) -> dict[str, int]:
    """Each stored order with its number of item rows."""
    return dict(
        conn.execute(
            "SELECT o.code, (SELECT count(*) FROM order_items i WHERE i.order_code = o.code) FROM orders o"
        ).fetchall()
    )


def expected(orders: list[dict]) -> dict[str, int]:
    return {o["code"]: len(o["items"]) for o in orders}


def count(conn: psycopg.Connection, q: str, *args) -> int:
    return conn.execute(q, args).fetchone()[0]


# --- §1.1 / §3.11: a full snapshot of another shop ------------------------------------------------------

ENTITY_MAKERS = {
    "orders": lambda k: order(k),
    "customers": lambda k: customer(k),
    "products": lambda k: product(k),
}


@pytest.mark.parametrize("entity", ["orders", "customers", "products"])
def test_full_snapshot_of_another_shop_is_refused_and_deletes_nothing(db_url, conn, tmp_path, entity):
    make = ENTITY_MAKERS[entity]
    ours = [make(f"ours-{i}") for i in range(10)]
    apply(db_url, entity, write_jsonl(tmp_path / "ours.gz", ours))
    # Same number of rows, no key in common: a row-count guard lets this through and deletes everything.
    theirs = write_jsonl(tmp_path / "theirs.gz", [make(f"theirs-{i}") for i in range(10)])
    with pytest.raises(MassDeleteRefusedError, match=rf"would delete 10 of the 10 stored {entity}"):
        apply(db_url, entity, theirs, full=True)
    key = KEYS[entity]
    stored = {r[0] for r in conn.execute(f"SELECT {key} FROM {entity}")}  # noqa: S608 - test constants
    assert stored == {f"ours-{i}" for i in range(10)}


def test_mass_delete_share_is_configurable(db_url, conn, tmp_path):
    apply(db_url, "orders", write_jsonl(tmp_path / "a.gz", [order(str(i)) for i in range(10)]))
    keep7 = write_jsonl(tmp_path / "b.gz", [order(str(i)) for i in range(7)])
    with pytest.raises(MassDeleteRefusedError, match="would delete 3 of the 10"):
        apply(db_url, "orders", keep7, full=True, mass_delete_share=0.2)
    assert count(conn, "SELECT count(*) FROM orders") == 10
    assert apply(db_url, "orders", keep7, full=True).deleted == 3  # the default: half


# --- §1.2 / §3.5: impossible dates -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("creationTime", "0001-01-01T00:30+0100"),  # overflows Python's datetime in UTC
        ("creationTime", "9999-12-31T10:00:00+0100"),  # 9999 Q4 has no end
        ("creationTime", "1999-12-31T22:00:00+0000"),
        ("changeTime", "0001-01-01T00:30+0100"),
        ("changeTime", "9999-12-31T23:59:59-0100"),
    ],
)
@pytest.mark.parametrize("workers", [0, 2])
def test_impossible_date_is_a_reject_not_a_failed_apply(db_url, conn, tmp_path, field, value, workers):
    good = [order(str(i)) for i in range(20)]
    bad = order("bad", **{"created" if field == "creationTime" else "changed": value})
    r = apply(
        db_url,
        "orders",
        write_jsonl(tmp_path / "d.gz", [*good[:10], bad, *good[10:]]),
        workers=workers,
        reject_threshold=0.1,
    )
    assert (r.rejected, r.lines) == (1, 21)
    line_no, reason = conn.execute("SELECT line_no, reason FROM snapshot_rejects").fetchone()
    assert line_no == 11 and field in reason and "outside the accepted dates" in reason
    assert stored_orders(conn) == expected(good)
    assert existing_partitions(conn) == {"order_items_2026_q3"}


def test_date_window_is_a_setting(db_url, conn, tmp_path):
    far = order("far", created=(datetime.now(UTC) + timedelta(days=500)).strftime("%Y-%m-%dT%H:%M:%S+0000"))
    old = order("old", created="1995-06-01T10:00:00+0200")
    f = write_jsonl(tmp_path / "w.gz", [far, old])
    with pytest.raises(TooManyRejectsError):
        apply(db_url, "orders", f)
    r = apply(db_url, "orders", f, window=DateWindow.of(date(1990, 1, 1), 3 * 365))
    assert r.rejected == 0 and stored_orders(conn) == expected([far, old])


# --- §1.5: schema drift is not bad data ----------------------------------------------------------------


@pytest.mark.parametrize("workers", [0, 2])
def test_schema_drift_fails_at_once_with_the_real_error_and_no_rejects(db_url, conn, tmp_path, workers):
    conn.execute("ALTER TABLE order_items RENAME COLUMN name TO item_name")
    f = write_jsonl(tmp_path / "o.gz", [order(str(i)) for i in range(30)])
    started = time.monotonic()
    with pytest.raises(psycopg.errors.UndefinedColumn):
        apply(db_url, "orders", f, workers=workers)
    assert time.monotonic() - started < 30
    assert count(conn, "SELECT count(*) FROM snapshot_rejects") == 0
    assert count(conn, "SELECT count(*) FROM orders") == 0


def test_missing_grant_fails_at_once_with_the_real_error(db_url, conn, tmp_path, pg_server_url):
    role = f"hub_nogrant_{os.getpid()}"
    conn.execute(f'DROP ROLE IF EXISTS "{role}"')
    conn.execute(f'CREATE ROLE "{role}" LOGIN')
    try:
        conn.execute(f'GRANT USAGE ON SCHEMA public TO "{role}"')
        conn.execute(f'GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO "{role}"')
        conn.execute(f'REVOKE INSERT ON order_items FROM "{role}"')
        conn.execute(f'GRANT TEMPORARY ON DATABASE "{conn.info.dbname}" TO "{role}"')
        run_id = new_run(db_url)
        as_role = psycopg.conninfo.make_conninfo(libpq_url(db_url), options=f"-c role={role}")
        f = write_jsonl(tmp_path / "o.gz", [order(str(i)) for i in range(30)])
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            apply_snapshot_file(as_role, "orders", f, run_id=run_id)
        assert count(conn, "SELECT count(*) FROM snapshot_rejects") == 0
    finally:
        conn.execute(f'DROP OWNED BY "{role}"')
        conn.execute(f'DROP ROLE "{role}"')


# --- §1.6: the pipeline is closed on failure -------------------------------------------------------------


def _loader_leftovers(path: Path) -> tuple[list[int], list[str], list[str]]:
    me = psutil.Process()
    workers = [p.pid for p in me.children(recursive=True) if "db.loader.worker_process" in " ".join(p.cmdline())]
    threads = [t.name for t in threading.enumerate() if t.name == "snapshot-reader"]
    files = [f.path for f in me.open_files() if f.path == str(path)]
    return workers, threads, files


@pytest.mark.parametrize("workers", [0, 2])
def test_failed_apply_leaves_no_worker_thread_or_open_file(db_url, tmp_path, workers):
    f = write_jsonl(tmp_path / "big.gz", [order(str(i)) for i in range(3000)])

    def boom(lines: int, done: int, total: int) -> None:
        raise RuntimeError("stop here")

    for _ in range(2):  # a task retry must not stack a second set of workers
        with pytest.raises(RuntimeError, match="stop here") as info:
            apply(db_url, "orders", f, workers=workers, chunk_bytes=64 << 10, progress=boom)
        # pytest keeps the traceback (and so the loader's frames) alive: the clean-up must not rely on GC.
        assert info.value is not None
        assert _loader_leftovers(f) == ([], [], [])


# --- §1.7: a retried apply writes its rejects once -------------------------------------------------------


def test_retried_apply_writes_each_reject_once(db_url, conn, tmp_path):
    f = write_jsonl(tmp_path / "r.gz", [order("1"), b"{not json", order("2"), b"[]"])
    run_id = new_run(db_url)
    for _ in range(3):
        with pytest.raises(TooManyRejectsError):
            apply_snapshot_file(db_url, "orders", f, run_id=run_id)
    rows = conn.execute("SELECT line_no FROM snapshot_rejects WHERE run_id = %s ORDER BY 1", (run_id,)).fetchall()
    assert rows == [(2,), (4,)]


# --- §3.5: bad files -------------------------------------------------------------------------------------


def test_truncated_gzip_fails_clearly_and_writes_nothing(db_url, conn, tmp_path):
    orders = [order(str(i)) for i in range(2000)]
    f = write_jsonl(tmp_path / "t.gz", orders)
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(Exception, match=r"(?i)compressed file ended|end-of-stream|truncated|EOF") as info:
        apply(db_url, "orders", f)
    assert not isinstance(info.value, TooManyRejectsError)
    assert stored_orders(conn) == {}
    assert count(conn, "SELECT count(*) FROM snapshot_rejects") == 0


def test_malformed_line_and_line_without_key_are_rejects_with_reasons(db_url, conn, tmp_path):
    good = [order(str(i)) for i in range(200)]
    keyless = order("x")
    del keyless["code"]
    f = write_jsonl(tmp_path / "m.gz", [*good[:50], b'{"code": "half', keyless, *good[50:]])
    r = apply(db_url, "orders", f)
    assert r.rejected == 2
    reasons = [x[0] for x in conn.execute("SELECT reason FROM snapshot_rejects ORDER BY line_no")]
    assert reasons[0].startswith("invalid JSON") and "missing key code" in reasons[1]
    assert stored_orders(conn) == expected(good)


def test_ten_percent_garbage_fails_after_recording_rejects_and_leaves_tables_untouched(db_url, conn, tmp_path):
    before = [order(f"old-{i}") for i in range(20)]
    apply(db_url, "orders", write_jsonl(tmp_path / "a.gz", before))
    lines: list = []
    for i in range(500):
        lines.append(order(str(i)))
        if i % 9 == 0:
            lines.append(b"\x00garbage \xff" if i % 2 else b'{"code": 1, "items": "no"}')
    with pytest.raises(TooManyRejectsError):
        apply(db_url, "orders", write_jsonl(tmp_path / "g.gz", lines), full=True)
    assert count(conn, "SELECT count(*) FROM snapshot_rejects") == 56
    assert stored_orders(conn) == expected(before)


# --- §3.6 / §3.7: the database session or the loader process dies mid-apply -------------------------------


def test_apply_session_terminated_mid_apply_leaves_nothing_and_a_rerun_completes(db_url, conn, tmp_path):
    orders = [order(str(i)) for i in range(3000)]
    f = write_jsonl(tmp_path / "o.gz", orders)
    dbname = conn.info.dbname

    def kill_sessions(lines: int, done: int, total: int) -> None:
        if lines > 500:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s "
                "AND pid <> pg_backend_pid() AND backend_type = 'client backend'",
                (dbname,),
            )

    with pytest.raises(psycopg.OperationalError):
        apply(db_url, "orders", f, chunk_bytes=64 << 10, progress=kill_sessions)
    assert stored_orders(conn) == {}
    apply(db_url, "orders", f)
    assert stored_orders(conn) == expected(orders)


_KILLED_LOADER = """
import sys, time
from pathlib import Path
from db.partitions.rollover import existing_partitions
from db.loader import ApplyOptions, apply_snapshot_file

def slow(lines, done, total):
    if lines > 500:
        print("applying", flush=True)
        time.sleep(60)

apply_snapshot_file(sys.argv[1], "orders", Path(sys.argv[2]), run_id=int(sys.argv[3]), progress=slow,
                    options=ApplyOptions(chunk_bytes=64 << 10, workers=int(sys.argv[4])))
"""


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_killed_mid_apply_leaves_nothing_and_a_rerun_completes(db_url, conn, tmp_path, workers):
    orders = [order(str(i)) for i in range(3000)]
    f = write_jsonl(tmp_path / "o.gz", orders)
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILLED_LOADER, db_url, str(f), str(new_run(db_url)), str(workers)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parents[2],
    )
    try:
        assert proc.stdout.readline().strip() == "applying"
        children = psutil.Process(proc.pid).children(recursive=True)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    psutil.wait_procs(children, timeout=30)  # workers see their pipe close and exit
    assert not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
    assert stored_orders(conn) == {}
    apply(db_url, "orders", f)
    assert stored_orders(conn) == expected(orders)


# --- §1.3 / §3.10: the lock session dies while the apply runs -------------------------------------------


def test_apply_cannot_commit_after_its_lock_session_died(db_url, conn, tmp_path):
    from db.locks import LockLost, advisory_lock

    orders = [order(str(i)) for i in range(2000)]
    f = write_jsonl(tmp_path / "o.gz", orders)

    with advisory_lock(db_url, "public", "hub-test-orders", wait_seconds=0) as holder:

        def kill_lock_session(lines: int, done: int, total: int) -> None:
            conn.execute("SELECT pg_terminate_backend(%s)", (holder.backend_pid,))

        with pytest.raises(LockLost):
            apply(db_url, "orders", f, chunk_bytes=64 << 10, progress=kill_lock_session)
    assert stored_orders(conn) == {}
    # with the lock held to the end, the same file applies whole
    with advisory_lock(db_url, "public", "hub-test-orders", wait_seconds=0):
        apply(db_url, "orders", f)
    assert stored_orders(conn) == expected(orders)
