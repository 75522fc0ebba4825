"""A trivial CLI command with and without a running Prefect server, side by side in one run.

    uv run python benchmarks/cli_startup.py              # 5 runs each, the benchmarks' embedded PostgreSQL
    uv run python benchmarks/cli_startup.py --runs 3 --server-url postgresql://postgres@/postgres?host=/var/run/postgresql

The command is ``hub import-file orders`` of a 10-order file (a new user's first try). First with no
server: Prefect starts a throwaway (ephemeral) server in the command's process each time. Then with the
Prefect server of ``hub serve`` up (started here as ``hub serve`` starts it: database ``prefect`` on the
same PostgreSQL, its URL in ``HUB_HOME/run/prefect-server.json``, which the CLI finds by itself).

Prints the medians of wall time and of the command's CPU time (user + system of the child processes:
less sensitive to other load on the machine than wall time), and the ratios. The server's own start-up
is reported once; it is paid once per ``hub serve``, not per command. The floor beside them: a process
that only imports what the command imports (Prefect and the flows), which no server can remove.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import fresh_db, server_url  # noqa: E402
from db.connection import with_database  # noqa: E402


def _child_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_command(env: dict[str, str], path: Path) -> tuple[float, float]:
    """Wall and CPU seconds of one ``hub import-file`` (uv's own start-up excluded: the venv's hub)."""
    hub = Path(sys.executable).with_name("hub")
    cpu0, t0 = _child_cpu(), time.perf_counter()
    proc = subprocess.run([str(hub), "import-file", "orders", str(path)], env=env, capture_output=True, text=True)
    wall, cpu = time.perf_counter() - t0, _child_cpu() - cpu0
    if proc.returncode != 0:
        raise SystemExit(f"hub import-file failed:\n{proc.stderr[-2000:]}")
    return wall, cpu


def run_imports(env: dict[str, str], path: Path) -> tuple[float, float]:
    """The floor: a Python process that only imports what ``hub import-file`` imports (Prefect, the flows)."""
    cpu0, t0 = _child_cpu(), time.perf_counter()
    subprocess.run([sys.executable, "-c", "import deployments.cli, flows.snapshot"], env=env, cwd=ROOT, check=True)
    return time.perf_counter() - t0, _child_cpu() - cpu0


def measure(label: str, env: dict[str, str], path: Path, runs: int, command=None) -> dict[str, float]:
    walls, cpus = [], []
    for i in range(runs):
        wall, cpu = (command or run_command)(env, path)
        walls.append(wall)
        cpus.append(cpu)
        print(f"  {label} run {i + 1}: {wall:.2f} s wall, {cpu:.2f} s CPU", flush=True)
    return {"wall": statistics.median(walls), "cpu": statistics.median(cpus)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
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
    print(f"hub import-file orders (10 orders), {args.runs} runs each")
    floor = measure("imports only", env, path, args.runs, run_imports)
    run_command(env, path)  # the first import inserts; every measured run applies the same 10 unchanged
    ephemeral = measure("ephemeral", env, path, args.runs)

    cfg = HubConfig(database_url=with_database(server, "bench_cli_startup"), home=home)
    t0 = time.perf_counter()
    proc = ps.start_server(home, ps.prefect_database_url(cfg), "127.0.0.1", args.port)
    startup = time.perf_counter() - t0
    try:
        running = measure("server up", env, path, args.runs)
    finally:
        ps.stop_process(proc)
        ps.state_path(home).unlink(missing_ok=True)

    print()
    print(f"{'':24}{'wall (median)':>16}{'CPU (median)':>16}")
    print(f"{'ephemeral Prefect':24}{ephemeral['wall']:>14.2f} s{ephemeral['cpu']:>14.2f} s")
    print(f"{'hub serve server up':24}{running['wall']:>14.2f} s{running['cpu']:>14.2f} s")
    print(f"{'imports only (floor)':24}{floor['wall']:>14.2f} s{floor['cpu']:>14.2f} s")
    print(f"{'ratio up / floor':24}{running['wall'] / floor['wall']:>15.1f}x{running['cpu'] / floor['cpu']:>15.1f}x")
    print(
        f"{'ratio ephemeral / up':24}{ephemeral['wall'] / running['wall']:>15.1f}x"
        f"{ephemeral['cpu'] / running['cpu']:>15.1f}x"
    )
    print(f"(the server's own start, once per `hub serve`: {startup:.1f} s; load average {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()
