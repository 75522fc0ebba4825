"""Snapshot apply throughput against a raw COPY of the same rows, measured side by side in one run.

    uv run python benchmarks/snapshot_apply.py                 # ~1M order items, embedded PostgreSQL 18
    uv run python benchmarks/snapshot_apply.py --server-url postgresql://postgres@/postgres?host=/var/run/postgresql
    uv run python benchmarks/snapshot_apply.py --items 1000000 --rss-items 4000000 --repeat 3

Prints, for raw JSON kept and not kept: the apply's order items/s (median of --repeat runs on a fresh
database each), the time of a raw ``COPY FROM STDIN`` of the resulting ``orders`` and ``order_items``
rows into unindexed tables and the ratio of the two rates, the same COPY into the hub's own (emptied, partitioned,
indexed) tables with the loader's deferred index builds, and the re-apply's rate (nothing changes).
Then the loader's peak RSS in a subprocess without Prefect at two file sizes, and the COPY cost of the
raw column as ``json`` vs ``jsonb`` (the measurement behind the column type). Generated files are kept
under --data-dir (default /tmp/shoptet-hub-bench) and reused.

With ``--process``, each run also times the whole ``hub import-file orders FILE`` command as an operator runs
it (a fresh process of the venv's ``hub`` into a fresh database: interpreter, imports, migrations check,
Prefect flow run, apply, run records), once with a Prefect server up (the one ``hub serve`` runs, started
here once) and once on Prefect's ephemeral server (no server running), beside the same run's raw COPY.
"""

from __future__ import annotations

import argparse
import atexit
import gzip
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson
import psycopg
from psycopg import sql

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import children_cpu, fresh_db, server_url  # noqa: E402
from db.connection import connect, libpq_url, with_database  # noqa: E402
from db.indexes import deferred as deferred_indexes  # noqa: E402
from db.loader import ApplyOptions, apply_snapshot_file  # noqa: E402
from db.runs import start_run  # noqa: E402
from shoptet.sandbox.generator import write_snapshot  # noqa: E402

ITEMS_PER_ORDER_ESTIMATE = 4.6  # the generator's mean, checked after generation


def snapshot_file(data_dir: Path, items: int) -> Path:
    orders = int(items / ITEMS_PER_ORDER_ESTIMATE)
    path = data_dir / f"orders-{orders}.jsonl.gz"
    if not path.exists():
        t = time.perf_counter()
        partial = path.with_name(path.name + ".partial")  # an interrupted run must not leave a short file
        write_snapshot("orders", orders, partial, seed=42)
        partial.rename(path)
        print(f"generated {path} ({orders:,} orders) in {time.perf_counter() - t:.0f} s", flush=True)
    return path


def file_stats(path: Path) -> tuple[int, int, int]:
    lines = raw_bytes = items = 0
    with gzip.open(path, "rb") as f:
        for line in f:
            lines += 1
            raw_bytes += len(line)
            items += len(orjson.loads(line)["items"])  # (not a text count: completion[] repeats item fields)
    return lines, raw_bytes, items


def apply(url: str, path: Path, keep_raw: bool) -> tuple[float, int]:
    with connect(url) as c:
        run_id = start_run(c, "orders", source="file", full=False)
    t = time.perf_counter()
    r = apply_snapshot_file(url, "orders", path, run_id=run_id, options=ApplyOptions(keep_raw=keep_raw))
    return time.perf_counter() - t, r.child_rows


def raw_copy_seconds(url: str, work: Path) -> tuple[float, float]:
    """Export the applied rows, then time COPY FROM STDIN of them into unindexed tables, and into the
    hub's tables (``hub_tables_copy_seconds``)."""
    with connect(url, autocommit=True) as c:
        files = {}
        for table in ("orders", "order_items"):
            out = work / f"{table}.copy"
            with (
                open(out, "wb") as f,
                c.cursor().copy(sql.SQL("COPY (SELECT * FROM {}) TO STDOUT").format(sql.Identifier(table))) as cp,
            ):
                for chunk in cp:
                    f.write(chunk)
            files[table] = out
            c.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(f"raw_{table}")))
            # Columns, types and how the raw column is stored and compressed; no indexes, no partitioning.
            c.execute(
                sql.SQL("CREATE TABLE {} (LIKE {} INCLUDING STORAGE INCLUDING COMPRESSION)").format(
                    sql.Identifier(f"raw_{table}"), sql.Identifier(table)
                )
            )
        t = time.perf_counter()
        for table, path in files.items():
            with (
                open(path, "rb") as f,
                c.cursor().copy(sql.SQL("COPY {} FROM STDIN").format(sql.Identifier(f"raw_{table}"))) as cp,
            ):
                while chunk := f.read(1 << 20):
                    cp.write(chunk)
        seconds = time.perf_counter() - t
        for table in files:
            c.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(f"raw_{table}")))
    try:
        return seconds, hub_tables_copy_seconds(url, files)
    finally:
        for path in files.values():
            path.unlink()


def hub_tables_copy_seconds(url: str, files: dict[str, Path]) -> float:
    """The floor of a first load into the hub's own tables: the same rows COPYed into the emptied
    (partitioned, indexed) tables, secondary indexes dropped first and rebuilt after, as the loader does
    (``db/indexes/deferred.py``), in one transaction. What the apply adds on top is reading, parsing and
    mapping the JSON, hashing, the chunk bookkeeping and the run's records."""
    with connect(url) as c:
        c.execute("TRUNCATE order_items, orders")
        c.commit()
        t = time.perf_counter()
        with c.transaction():
            deferred = [ix for table in files for ix in deferred_indexes.drop_if_empty(c, "public", table)]
            for table, path in files.items():
                with (
                    open(path, "rb") as f,
                    c.cursor().copy(sql.SQL("COPY {} FROM STDIN").format(sql.Identifier(table))) as cp,
                ):
                    while chunk := f.read(1 << 20):
                        cp.write(chunk)
            deferred_indexes.rebuild(c, deferred)
        return time.perf_counter() - t


def peak_rss_mb(url: str, path: Path) -> tuple[float, float]:
    """The loader alone in a fresh process (no Prefect), on a fresh database.

    The process's own peak is VmHWM: ``ru_maxrss`` of a child started with vfork (as subprocess does)
    inherits this benchmark process's peak, which is bigger than the loader's. The workers' figure is
    ``ru_maxrss`` of the loader's children, an upper bound for the same reason.
    """
    code = f"""
import resource, sys
sys.path.insert(0, {str(Path(__file__).resolve().parent.parent)!r})
from pathlib import Path
from db.connection import connect
from db.loader import ApplyOptions, apply_snapshot_file
from db.runs import start_run
url = {url!r}
with connect(url) as c:
    run_id = start_run(c, "orders", source="file", full=False)
apply_snapshot_file(url, "orders", Path({str(path)!r}), run_id=run_id, options=ApplyOptions(keep_raw=True))
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(hwm, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    main_kb, worker_kb = map(int, out.stdout.strip().splitlines()[-1].split())
    return main_kb / 1024, worker_kb / 1024


def json_vs_jsonb(url: str, path: Path, limit: int = 40_000) -> dict[str, float]:
    with gzip.open(path, "rb") as f:
        lines = [line.strip().decode() for _, line in zip(range(limit), f, strict=False)]
    mb = sum(map(len, lines)) / 1e6
    out = {}
    with connect(url, autocommit=True) as c:
        # "json uncompressed": STORAGE EXTERNAL, the TOAST compression (pglz without lz4) left out
        for label, typ, storage in (
            ("text", "text", None),
            ("json", "json", None),
            ("jsonb", "jsonb", None),
            ("json uncompressed", "json", "EXTERNAL"),
        ):
            times = []
            for _ in range(3):
                c.execute(sql.SQL("DROP TABLE IF EXISTS bench_raw"))
                c.execute(sql.SQL("CREATE TABLE bench_raw (raw {})").format(sql.SQL(typ)))
                if storage:
                    c.execute(sql.SQL("ALTER TABLE bench_raw ALTER raw SET STORAGE {}").format(sql.SQL(storage)))
                t = time.perf_counter()
                with c.cursor().copy("COPY bench_raw (raw) FROM STDIN") as cp:
                    for line in lines:
                        cp.write_row((line,))
                times.append(time.perf_counter() - t)
            out[label] = mb / statistics.median(times)
        c.execute("DROP TABLE bench_raw")
    return out


HUB = Path(sys.executable).with_name("hub")


class ImportProcess:
    """``hub import-file`` as a process into a fresh database, with and without a Prefect server up."""

    def __init__(self, server: str, path: Path, port: int = 4298) -> None:
        from deployments import prefect_server as ps
        from flows.config import HubConfig

        self.server, self.path, self.ps = server, path, ps
        self.home = Path(tempfile.mkdtemp(prefix="hub-bench-import-"))
        cfg = HubConfig(database_url=fresh_db(server, "hub_bench_proc"), home=self.home)
        self.proc = ps.start_server(self.home, ps.prefect_database_url(cfg), "127.0.0.1", port)
        atexit.register(self.close)  # a failed run (SystemExit, a traceback) leaves no server behind

    def seconds(self, keep_raw: bool, server_up: bool) -> float:
        url = fresh_db(self.server, "hub_bench_proc")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API_URL", "HUB_"))}
        env.update(
            HUB_DATABASE_URL=url,
            HUB_KEEP_RAW_JSON="true" if keep_raw else "false",
            PREFECT_HOME=str(self.home / "prefect-client"),
            PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="180",
        )
        # hub serve's server is found through HUB_HOME/run/prefect-server.json; another home has none
        env["HUB_HOME"] = str(self.home if server_up else self.home / "no-server")
        server0, command0, t = self._server_cpu(), children_cpu(), time.perf_counter()
        done = subprocess.run([str(HUB), "import-file", "orders", str(self.path)], env=env, capture_output=True)
        seconds = time.perf_counter() - t
        if done.returncode:
            raise SystemExit(f"hub import-file exited {done.returncode}: {done.stderr[-2000:].decode()}")
        # CPU-s of the command with its parse workers (and its ephemeral server), and of the server up meanwhile
        self.cpu = (children_cpu() - command0, self._server_cpu() - server0 if server_up else 0.0)
        return seconds

    def _server_cpu(self) -> float:
        import psutil

        root = psutil.Process(self.proc.pid)
        total = 0.0
        for p in [root, *root.children(recursive=True)]:
            try:
                total += sum(p.cpu_times()[:2])
            except psutil.Error:
                pass
        return total

    def close(self) -> None:
        from db.embedded import stop_embedded_server

        self.ps.stop_process(self.proc)  # a second call signals nothing: the process is reaped
        self.ps.state_path(self.home).unlink(missing_ok=True)
        stop_embedded_server(self.home, force=True)  # the Prefect database's embedded PostgreSQL


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--server-url", help="PostgreSQL server URL (default: the embedded PostgreSQL 18)")
    ap.add_argument("--items", type=int, default=1_000_000)
    ap.add_argument("--rss-items", type=int, default=4_000_000, help="larger file for the RSS comparison")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--data-dir", type=Path, default=Path(tempfile.gettempdir()) / "shoptet-hub-bench")
    ap.add_argument("--skip-rss", action="store_true")
    ap.add_argument("--process", action="store_true", help="also time the whole `hub import-file` process")
    args = ap.parse_args()
    args.data_dir.mkdir(parents=True, exist_ok=True)

    server = server_url(args.server_url)
    path = snapshot_file(args.data_dir, args.items)
    lines, raw_bytes, items = file_stats(path)
    with psycopg.connect(libpq_url(with_database(server, "postgres"))) as c:
        version = c.execute("SHOW server_version").fetchone()[0]
    print(
        f"PostgreSQL {version}; {os.cpu_count()} cores; file: {lines:,} orders, {items:,} items, "
        f"{raw_bytes / 1e6:,.0f} MB JSON ({raw_bytes / lines:,.0f} B/order), {path.stat().st_size / 1e6:,.0f} MB gz"
    )

    results = {}
    importer = ImportProcess(server, path) if args.process else None
    for keep_raw in (True, False):
        applies, reapplies, raws, floors = [], [], [], []
        processes: dict[str, list[float]] = {"server up": [], "ephemeral": []}
        for i in range(args.repeat):
            url = fresh_db(server, "hub_bench")
            s, written = apply(url, path, keep_raw)
            assert written == items, (written, items)
            applies.append(s)
            reapplies.append(apply(url, path, keep_raw)[0])
            raw, floor = raw_copy_seconds(url, args.data_dir)
            raws.append(raw)
            floors.append(floor)
            line = (
                f"  raw json {'kept' if keep_raw else 'off '} run {i + 1}: apply {s:.1f} s, re-apply "
                f"{reapplies[-1]:.1f} s, raw COPY {raws[-1]:.1f} s, COPY into the hub's tables {floor:.1f} s"
            )
            if importer:
                for mode in processes:
                    processes[mode].append(importer.seconds(keep_raw, server_up=mode == "server up"))
                    command, srv = importer.cpu
                    line += f", hub import-file {mode} {processes[mode][-1]:.1f} s (CPU: command {command:.1f} s"
                    line += f", server {srv:.1f} s)" if mode == "server up" else ")"
            print(line, flush=True)
        a, r, c, h = map(statistics.median, (applies, reapplies, raws, floors))
        results[keep_raw] = {
            "apply_s": a,
            "reapply_s": r,
            "copy_s": c,
            "apply_rate": items / a,
            "reapply_rate": items / r,
            "copy_rate": items / c,
            "ratio": c / a,
            "hub_copy_s": h,
            "hub_copy_ratio": h / a,
        }
        for mode, times in processes.items():
            if times:
                results[keep_raw][f"process_{mode}_s"] = statistics.median(times)
                results[keep_raw][f"process_{mode}_ratio"] = c / statistics.median(times)
    if importer:
        importer.close()

    print()
    print(
        f"{'raw JSON':<9} {'apply items/s':>14} {'raw COPY items/s':>17} {'apply/COPY':>11} "
        f"{'re-apply items/s':>17} {'re-apply/apply':>15} {'hub-tables COPY s':>18} {'apply/that':>11}"
    )
    for keep_raw, m in results.items():
        print(
            f"{'kept' if keep_raw else 'off':<9} {m['apply_rate']:>14,.0f} {m['copy_rate']:>17,.0f} "
            f"{m['ratio']:>11.2f} {m['reapply_rate']:>17,.0f} {m['reapply_rate'] / m['apply_rate']:>15.2f}"
            f" {m['hub_copy_s']:>18.1f} {m['hub_copy_ratio']:>11.2f}"
        )

    if importer:
        head = f"{'raw JSON':<9} {'whole hub import-file process':<30} {'s':>6} {'items/s':>9}"
        print(f"\n{head} {'/ raw COPY rate':>16}")
        for keep_raw, m in results.items():
            for mode in ("server up", "ephemeral"):
                t = m[f"process_{mode}_s"]
                print(
                    f"{'kept' if keep_raw else 'off':<9} {mode:<30} {t:>6.1f} {items / t:>9,.0f} "
                    f"{m[f'process_{mode}_ratio']:>16.2f}"
                )

    rss = {}
    if not args.skip_rss:
        big = snapshot_file(args.data_dir, args.rss_items)
        workers_rss = {}
        for label, p in (("~1M", path), (f"~{args.rss_items // 1_000_000}M", big)):
            rss[label], workers_rss[label] = peak_rss_mb(fresh_db(server, "hub_bench_rss"), p)
        a, b = rss.values()
        print(
            "loader peak RSS (main process): "
            + ", ".join(f"{k} items {v:.0f} MB" for k, v in rss.items())
            + f" (difference {100 * (b - a) / a:+.1f} %); parse worker processes peaked at (at most) "
            + ", ".join(f"{v:.0f} MB" for v in workers_rss.values())
        )

    raw_type = json_vs_jsonb(fresh_db(server, "hub_bench"), path)
    print("raw column COPY MB/s: " + ", ".join(f"{k} {v:.0f}" for k, v in raw_type.items()))

    kept, off = results[True], results[False]
    checks = [
        ("apply >= 0.4 x raw COPY rate (raw kept)", kept["ratio"] >= 0.4),
        ("apply >= 0.4 x raw COPY rate (raw off)", off["ratio"] >= 0.4),
        (">= 60k items/s with raw JSON kept", kept["apply_rate"] >= 60_000),
        (">= 100k items/s without raw JSON", off["apply_rate"] >= 100_000),
        ("re-apply at least as fast as apply", all(m["reapply_s"] <= m["apply_s"] for m in results.values())),
    ]
    if importer:
        checks += [
            ("whole hub import-file process >= 0.6 x raw COPY rate (raw kept, server up)",
             kept["process_server up_ratio"] >= 0.6),
        ]  # fmt: skip
    if rss:
        a, b = rss.values()
        checks += [
            ("loader peak RSS <= 100 MB", max(a, b) <= 100),
            ("RSS within +-10 % between sizes", abs(b - a) / a <= 0.10),
        ]
    print()
    for name, ok in checks:
        print(f"  {'PASS' if ok else 'MISS'}  {name}")
    print(
        json.dumps(
            {
                "results": {("kept" if k else "off"): v for k, v in results.items()},
                "rss_mb": rss,
                "raw_type_mb_s": raw_type,
            },
            default=float,
        )
    )


if __name__ == "__main__":
    main()
