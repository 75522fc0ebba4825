"""Where one snapshot apply spends CPU: the loader process, its parse workers, the PostgreSQL backend.

    uv run python benchmarks/apply_profile.py            # raw JSON kept, the ~1M-item file of snapshot_apply.py
    uv run python benchmarks/apply_profile.py --raw off

On a 2-core machine the apply is bound by the sum of the three (plus what else runs), so this is the
figure to move; wall time alone is too noisy here to compare two builds. One apply on a fresh database.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import db.loader.apply as loader  # noqa: E402
from benchmarks.common import fresh_db, server_url  # noqa: E402
from benchmarks.scale import _cpu_seconds  # noqa: E402
from benchmarks.snapshot_apply import snapshot_file  # noqa: E402
from db.connection import connect  # noqa: E402
from db.loader import ApplyOptions  # noqa: E402
from db.runs import start_run  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--server-url", help="PostgreSQL server URL (default: the benchmarks' embedded PostgreSQL 18)")
    ap.add_argument("--items", type=int, default=1_000_000)
    ap.add_argument("--raw", choices=("kept", "off"), default="kept")
    ap.add_argument("--data-dir", type=Path, default=Path(tempfile.gettempdir()) / "shoptet-hub-bench")
    args = ap.parse_args()
    args.data_dir.mkdir(parents=True, exist_ok=True)
    path = snapshot_file(args.data_dir, args.items)
    url = fresh_db(server_url(args.server_url), "hub_profile")
    with connect(url) as c:
        run_id = start_run(c, "orders", source="file", full=False)

    # The backends live on the server's side: sample their CPU while they exist (they exit on close).
    backends: dict[int, float] = {}
    real_connect = loader.connect

    def connect_and_watch(*a, **kw):  # noqa: ANN002, ANN003, ANN202
        conn = real_connect(*a, **kw)
        backends[conn.info.backend_pid] = 0.0
        return conn

    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.1):
            for pid in list(backends):
                try:
                    backends[pid] = _cpu_seconds(pid)
                except (FileNotFoundError, ProcessLookupError, PermissionError):
                    pass

    loader.connect = connect_and_watch
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    self0, kids0 = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    options = ApplyOptions(keep_raw=args.raw == "kept")
    r = loader.apply_snapshot_file(url, "orders", path, run_id=run_id, options=options)
    wall = time.perf_counter() - t
    done.set()
    sampler.join()
    self1, kids1 = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    main_cpu = self1.ru_utime - self0.ru_utime + self1.ru_stime - self0.ru_stime
    workers_cpu = kids1.ru_utime - kids0.ru_utime + kids1.ru_stime - kids0.ru_stime
    pg_cpu = max(backends.values())  # the main connection's backend; the side one only writes rejects and DDL
    print(
        f"raw JSON {args.raw}: {r.child_rows:,} items in {wall:.1f} s ({r.child_rows / wall:,.0f} items/s); CPU s: "
        f"loader process {main_cpu:.1f}, parse workers {workers_cpu:.1f}, PostgreSQL backend {pg_cpu:.1f}, "
        f"total {main_cpu + workers_cpu + pg_cpu:.1f} on {os.cpu_count()} cores"
    )


if __name__ == "__main__":
    main()
