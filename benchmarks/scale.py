"""Does the first load's cost grow linearly? First loads of growing orders snapshots, side by side in one run.

    uv run python benchmarks/scale.py                                   # 1M, 4M and 12M items, raw kept and off
    uv run python benchmarks/scale.py --items 1000000,4000000 --raw kept

For each size and raw-JSON mode: ``apply_snapshot_file`` of the orders file (the generator of
``benchmarks/snapshot_apply.py``, files kept under --data-dir) as the first load into a fresh migrated
database, as a full snapshot (what ``hub sync orders`` does first). Printed per load: items/s; CPU
seconds per million items of the loader process, its parse workers and the PostgreSQL backend (the
figure other load on a shared 2-core machine moves least); WAL written (``pg_stat_wal``); checkpoints
during the load; what the backends waited on (``pg_stat_activity`` sampled every 0.2 s); the heap,
index and TOAST sizes. Then the ratio of the largest load's rate to the smallest's (target >= 0.8:
linear cost), in wall time and in CPU per item.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import db.loader.apply as loader  # noqa: E402
from benchmarks.common import fresh_db, server_url  # noqa: E402
from benchmarks.snapshot_apply import snapshot_file  # noqa: E402
from db.connection import connect, libpq_url  # noqa: E402
from db.loader import ApplyOptions  # noqa: E402
from db.runs import start_run  # noqa: E402


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def _server_counters(c: psycopg.Connection) -> dict[str, float]:
    """WAL bytes and checkpoints so far (pg_stat_checkpointer from PostgreSQL 17, pg_stat_bgwriter before)."""
    wal = c.execute("SELECT wal_bytes, wal_fpi FROM pg_stat_wal").fetchone()
    if c.info.server_version >= 170000:
        cp = c.execute("SELECT num_timed, num_requested FROM pg_stat_checkpointer").fetchone()
    else:
        cp = c.execute("SELECT checkpoints_timed, checkpoints_req FROM pg_stat_bgwriter").fetchone()
    return {"wal_bytes": float(wal[0]), "wal_fpi": float(wal[1]), "cp_timed": cp[0], "cp_requested": cp[1]}


class Watch:
    """While one apply runs: the CPU of the backends it opens, and what they wait on (sampled)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.backends: dict[int, float] = {}
        self.waits: Counter[str] = Counter()
        self.samples = 0
        self.done = threading.Event()
        self.real_connect = loader.connect

    def connect(self, *a, **kw):  # noqa: ANN002, ANN003, ANN201 - wraps db.connection.connect
        conn = self.real_connect(*a, **kw)
        self.backends[conn.info.backend_pid] = 0.0
        return conn

    def _sample(self) -> None:
        with psycopg.connect(libpq_url(self.url), autocommit=True) as c:
            while not self.done.wait(0.2):
                for pid in list(self.backends):
                    try:
                        self.backends[pid] = _cpu_seconds(pid)
                    except (FileNotFoundError, ProcessLookupError, PermissionError):
                        pass
                rows = c.execute(
                    "SELECT pid, state, wait_event_type, wait_event FROM pg_stat_activity WHERE pid = ANY(%s)",
                    (list(self.backends),),
                ).fetchall()
                for _, state, wtype, wevent in rows:  # plain "idle": the side connection, between its writes
                    if state == "active":
                        self.waits[f"{wtype}:{wevent}" if wtype else "CPU (no wait)"] += 1
                    elif state != "idle":
                        self.waits[f"{state}: the client's turn"] += 1
                self.samples += 1

    def __enter__(self) -> Watch:
        loader.connect = self.connect
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.thread.join()
        loader.connect = self.real_connect


def sizes(c: psycopg.Connection) -> dict[str, float]:
    """MB of the shop tables' heaps, indexes and TOAST (partitions summed into their parent)."""
    row = c.execute(
        """SELECT sum(pg_relation_size(c.oid)), sum(pg_indexes_size(c.oid)),
                  sum(coalesce(pg_total_relation_size(nullif(c.reltoastrelid, 0)), 0))
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE n.nspname = current_schema() AND c.relkind = 'r'
              AND (c.relname IN ('orders') OR c.relname LIKE 'order\\_items%%')"""
    ).fetchone()
    return {"heap_mb": row[0] / 2**20, "index_mb": row[1] / 2**20, "toast_mb": row[2] / 2**20}


def load(server: str, path: Path, keep_raw: bool) -> dict:
    url = fresh_db(server, "hub_scale")
    with connect(url) as c:
        run_id = start_run(c, "orders", source="file", full=True)
        before = _server_counters(c)
    self0, kids0 = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    with Watch(url) as w:
        t = time.perf_counter()
        options = ApplyOptions(full=True, keep_raw=keep_raw)
        r = loader.apply_snapshot_file(url, "orders", path, run_id=run_id, options=options)
        wall = time.perf_counter() - t
    self1, kids1 = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    with connect(url) as c:
        after = _server_counters(c)
        size = sizes(c)
    per_m = 1e6 / r.child_rows
    return {
        "items": r.child_rows,
        "wall": wall,
        "rate": r.child_rows / wall,
        "cpu_loader": (self1.ru_utime - self0.ru_utime + self1.ru_stime - self0.ru_stime) * per_m,
        "cpu_workers": (kids1.ru_utime - kids0.ru_utime + kids1.ru_stime - kids0.ru_stime) * per_m,
        "cpu_backend": sum(w.backends.values()) * per_m,
        "wal_gb": (after["wal_bytes"] - before["wal_bytes"]) / 2**30,
        "wal_fpi": after["wal_fpi"] - before["wal_fpi"],
        "checkpoints": f"{after['cp_requested'] - before['cp_requested']:.0f} requested, "
        f"{after['cp_timed'] - before['cp_timed']:.0f} timed",
        "waits": {k: round(100 * v / max(1, w.samples)) for k, v in w.waits.most_common(5)},
        **size,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--server-url", help="PostgreSQL server URL (default: the benchmarks' embedded PostgreSQL 18)")
    ap.add_argument("--items", default="1000000,4000000,12000000", help="comma-separated item counts")
    ap.add_argument("--raw", choices=("kept", "off", "both"), default="both")
    ap.add_argument("--data-dir", type=Path, default=Path(tempfile.gettempdir()) / "shoptet-hub-bench")
    args = ap.parse_args()
    args.data_dir.mkdir(parents=True, exist_ok=True)
    counts = sorted(int(x) for x in args.items.split(","))
    files = {n: snapshot_file(args.data_dir, n) for n in counts}  # generated first, outside the timings
    server = server_url(args.server_url)
    modes = {"kept": (True,), "off": (False,), "both": (True, False)}[args.raw]
    print(f"load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores", flush=True)
    results: dict[tuple[int, bool], dict] = {}
    for keep_raw in modes:
        for n in counts:
            r = results[(n, keep_raw)] = load(server, files[n], keep_raw)
            print(
                f"raw {'kept' if keep_raw else 'off '} {r['items']:>11,} items: {r['wall']:7.1f} s, "
                f"{r['rate']:8,.0f} items/s; CPU s per 1M items: loader {r['cpu_loader']:.1f}, workers "
                f"{r['cpu_workers']:.1f}, backend {r['cpu_backend']:.1f}; WAL {r['wal_gb']:.2f} GB "
                f"({r['wal_fpi']:,.0f} full-page images), checkpoints {r['checkpoints']}; heap {r['heap_mb']:,.0f} "
                f"MB, indexes {r['index_mb']:,.0f} MB, TOAST {r['toast_mb']:,.0f} MB; backend samples (%): "
                f"{r['waits']}; load average {os.getloadavg()[0]:.1f}",
                flush=True,
            )
    for keep_raw in modes:
        small, large = results[(counts[0], keep_raw)], results[(counts[-1], keep_raw)]
        parts = ("cpu_loader", "cpu_workers", "cpu_backend")
        cpu_small = statistics.fsum(small[k] for k in parts)
        cpu_large = statistics.fsum(large[k] for k in parts)
        print(
            f"raw {'kept' if keep_raw else 'off'}: rate at {large['items']:,} / rate at {small['items']:,} items = "
            f"{large['rate'] / small['rate']:.2f} (target >= 0.8); CPU per item, smallest / largest = "
            f"{cpu_small / cpu_large:.2f}"
        )


if __name__ == "__main__":
    main()
