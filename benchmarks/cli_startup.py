"""CLI commands with and without a running Prefect server, side by side with the import floor, in one run.

    uv run python benchmarks/cli_startup.py              # 3 runs each, the benchmarks' embedded PostgreSQL
    uv run python benchmarks/cli_startup.py --runs 5 --demo-orders 20000 --server-url postgresql://postgres@/postgres?host=/var/run/postgresql

Commands, each a fresh process of the venv's ``hub`` (uv's own start-up excluded):

- ``hub --help``; ``hub status``; ``hub import-file orders`` of a 10-order file (a new user's first try:
  the first import inserts, each measured run applies the same 10 unchanged);
- each with no Prefect server (Prefect's throwaway ephemeral server, started by the command) and with
  the server ``hub serve`` runs (database ``prefect`` on the same PostgreSQL, its URL in
  ``HUB_HOME/run/prefect-server.json``, which the CLI finds by itself);
- ``hub demo`` re-run (ephemeral Prefect, as a new user runs it; ``--demo-orders``, 0 skips it).

Beside them the floors no command can go under: ``python -c pass`` (the interpreter) and ``python -c
"import prefect"`` (the Prefect client every flow run needs). Medians of wall time and of the command's
CPU time (user + system of the child processes: less sensitive to other load on the machine), and the
ratios to the floors. The server's own start-up is reported once (paid once per ``hub serve``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import children_cpu, fresh_db, server_url  # noqa: E402
from db.connection import with_database  # noqa: E402

HUB = Path(sys.executable).with_name("hub")
TARGETS = {"server up": 3.0, "ephemeral": 10.0}


def timed(argv: list[str], env: dict[str, str], ok_codes: tuple[int, ...] = (0,)) -> tuple[float, float]:
    """Wall and CPU seconds of one process."""
    cpu0, t0 = children_cpu(), time.perf_counter()
    proc = subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True)
    wall, cpu = time.perf_counter() - t0, children_cpu() - cpu0
    if proc.returncode not in ok_codes:
        raise SystemExit(f"{' '.join(argv[:3])} exited {proc.returncode}:\n{proc.stderr[-2000:]}")
    return wall, cpu


def measure(label: str, argv: list[str], env: dict[str, str], runs: int, ok=(0,)) -> dict[str, float]:
    walls, cpus = [], []
    for i in range(runs):
        wall, cpu = timed(argv, env, ok)
        walls.append(wall)
        cpus.append(cpu)
        print(f"  {label} run {i + 1}: {wall:.2f} s wall, {cpu:.2f} s CPU", flush=True)
    return {"wall": statistics.median(walls), "cpu": statistics.median(cpus)}


def commands(path: Path) -> dict[str, tuple[list[str], tuple[int, ...]]]:
    return {
        "hub --help": ([str(HUB), "--help"], (0,)),
        "hub status": ([str(HUB), "status"], (0, 1, 2)),  # warn/fail levels (no backup yet) are answers too
        "hub import-file (10)": ([str(HUB), "import-file", "orders", str(path)], (0,)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--demo-orders", type=int, default=20_000, help="hub demo --orders (0: no demo run)")
    ap.add_argument("--server-url", help="PostgreSQL server URL (default: the benchmarks' embedded server)")
    ap.add_argument("--port", type=int, default=4299, help="Port of the Prefect server started here")
    args = ap.parse_args()

    from deployments import prefect_server as ps
    from flows.config import HubConfig
    from shoptet.sandbox.generator import write_snapshot

    server = server_url(args.server_url)
    hub_db = fresh_db(server, "bench_cli_startup")
    home = Path(tempfile.mkdtemp(prefix="hub-cli-bench-"))
    path = home / "orders-10.jsonl.gz"
    write_snapshot("orders", 10, path, seed=7)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API_URL")}
    env.update(
        HUB_HOME=str(home),
        HUB_DATABASE_URL=hub_db,
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_HOME=str(home / "prefect-client"),
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="180",  # a loaded machine: do not time out
    )
    cmds = commands(path)
    print(f"{args.runs} runs each; load average {os.getloadavg()[0]:.1f}")
    rows: dict[str, dict[str, float]] = {}
    rows["python -c pass"] = measure("interpreter", [sys.executable, "-c", "pass"], env, args.runs)
    rows["import prefect"] = measure("import prefect", [sys.executable, "-c", "import prefect"], env, args.runs)
    timed(cmds["hub import-file (10)"][0], env)  # the first import inserts; measured runs apply 10 unchanged
    for name, (argv, ok) in cmds.items():
        rows[f"{name}, ephemeral"] = measure(f"{name}, ephemeral", argv, env, args.runs, ok)
    if args.demo_orders:
        demo_env = {k: v for k, v in env.items() if k != "HUB_DATABASE_URL"}  # the demo's embedded server
        demo = [str(HUB), "demo", "--orders", str(args.demo_orders)]
        timed(demo, demo_env)  # the first run loads; measured runs are re-runs (everything unchanged)
        rows["hub demo re-run, ephemeral"] = measure("hub demo re-run", demo, demo_env, args.runs)
        subprocess.run([str(HUB), "db", "stop", "--force"], env=demo_env, capture_output=True)

    cfg = HubConfig(database_url=with_database(server, "bench_cli_startup"), home=home)
    t0 = time.perf_counter()
    proc = ps.start_server(home, ps.prefect_database_url(cfg), "127.0.0.1", args.port)
    startup = time.perf_counter() - t0
    try:
        for name, (argv, ok) in cmds.items():
            rows[f"{name}, server up"] = measure(f"{name}, server up", argv, env, args.runs, ok)
    finally:
        from db.embedded import stop_embedded_server

        ps.stop_process(proc)
        ps.state_path(home).unlink(missing_ok=True)
        stop_embedded_server(home, force=True)  # the Prefect database's embedded PostgreSQL

    floor = rows["import prefect"]
    print()
    print(f"{'':34}{'wall (median)':>14}{'CPU (median)':>14}{'wall / import prefect':>23}{'target':>9}")
    for name, r in rows.items():
        target = next((f"<= {t:.0f} s" for k, t in TARGETS.items() if name.endswith(k) and "demo" not in name), "")
        verdict = "" if not target else (" met" if r["wall"] <= float(target.split()[1]) else " MISSED")
        print(
            f"{name:34}{r['wall']:>12.2f} s{r['cpu']:>12.2f} s{r['wall'] / floor['wall']:>22.2f}x{target:>9}{verdict}"
        )
    print(f"(the server's own start, once per `hub serve`: {startup:.1f} s; load average {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()
