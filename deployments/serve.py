"""``hub serve``: the one-machine way to run the hub as Prefect users do.

It starts (or reuses) a local Prefect server whose database is the ``prefect`` database on the hub's
PostgreSQL (see ``deployments.prefect_server``), bootstraps it, registers every deployment of
``prefect.yaml`` and runs one process worker on the ``hub-process`` pool until Ctrl-C or SIGTERM.

Why a worker and the registered deployments rather than Prefect's ``serve()`` of the flows: the
deployments are then exactly those of ``prefect.yaml`` (schedules, concurrency limits, collision
strategies, pull step) that workers on other machines run, so one machine and many differ only in
where the workers are; a second ``hub deploy`` against the same server cannot fight over deployment
names with a ``serve()`` process either.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console

from deployments import prefect_server as ps
from deployments.bootstrap import WORK_POOL, DeployError, bootstrap, deploy
from deployments.checkout import resolve_checkout
from deployments.serve_day_one import notice, report_paused
from deployments.serve_worker import forget_worker, record_worker, stop_orphan_worker


def _interrupt(signum, frame) -> None:  # noqa: ANN001 - signal handler signature
    raise KeyboardInterrupt


def start_worker(home: Path, api_url: str, database_url: str, checkout: Path, name: str) -> subprocess.Popen:
    """A process worker on the pool, with what its runs need: the server, the database, the checkout."""
    run = home / "run"
    run.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "PREFECT_API_URL": api_url,
        "HUB_DATABASE_URL": database_url,  # its runs are deployment runs: they need it (flows/runtime.py)
        "HUB_CHECKOUT": str(checkout),
        "HUB_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    with open(run / "worker.log", "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "prefect", "worker", "start", "--pool", WORK_POOL, "--type", "process"]
            + ["--name", name],
            env=env,
            cwd=checkout,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


def _server(cfg, host: str, port: int, console: Console) -> tuple[str, subprocess.Popen | None]:  # noqa: ANN001
    """The API URL to use and the server process when this command started it."""
    if os.environ.get("PREFECT_API_URL"):
        api = os.environ["PREFECT_API_URL"]
        if not ps.healthy(api, timeout=5):
            raise ps.ServerError(f"PREFECT_API_URL={api} does not answer")
        console.print(f"using the Prefect server at {api} (PREFECT_API_URL)")
        return api, None
    state = ps.running_server(cfg.home)
    if state is not None:
        console.print(f"reusing the running Prefect server {state.api_url} (pid {state.pid})")
        return state.api_url, None
    ps.check_listen_host(host)  # before anything is made for it
    ps.use_server_auth()
    database, where = ps.prefect_database(cfg)
    console.print(f"starting the Prefect server (its database: {where})…")
    proc = ps.start_server(cfg.home, database, host, port)
    return f"http://{host}:{port}/api", proc


def run_serve(host: str = "127.0.0.1", port: int = 4200, console: Console | None = None) -> int:
    """Run until interrupted; returns the exit code. Everything it started is stopped on the way out."""
    from flows import runtime
    from flows.config import get_config

    console = console or Console(stderr=True)
    cfg = get_config()
    checkout = resolve_checkout()
    for line in notice(cfg, checkout):
        console.print(line)
    started: list[tuple[str, subprocess.Popen]] = []
    previous = signal.signal(signal.SIGTERM, _interrupt)
    # Also SIGINT: a shell starts background jobs with it ignored, and Python then keeps ignoring it.
    signal.signal(signal.SIGINT, _interrupt)
    try:
        url = runtime.database_url(cfg)
        runtime.ensure_schema(url, cfg.db_schema)
        api, server = _server(cfg, host, port, console)
        if server is not None:
            started.append(("Prefect server", server))
        os.environ["PREFECT_API_URL"] = api
        for what, action in bootstrap():
            console.print(f"  {what}: {action}")
        console.print("registering the deployments of prefect.yaml…")
        deploy(checkout)
        if line := report_paused(cfg, checkout):
            console.print(f"  {line}")
        name = f"hub-serve-{socket.gethostname()}-{os.getpid()}"
        _replace_orphan_worker(cfg.home, console)
        started.append(("worker", start_worker(cfg.home, api, url, checkout, name)))
        record_worker(cfg.home, started[-1][1])
        console.print(f"[bold]hub serve[/]: UI at {api.removesuffix('/api')}  ·  worker {name} on {WORK_POOL}")
        console.print(f"logs: {cfg.home / 'run'}  ·  Ctrl-C stops it")
        while True:
            for what, proc in started:
                if proc.poll() is not None:
                    console.print(f"[bold red]error:[/] the {what} exited (code {proc.returncode}); stopping")
                    return 1
            time.sleep(1)
    except KeyboardInterrupt:
        console.print("stopping…")
        return 0
    except (ps.ServerError, DeployError) as exc:
        console.print(f"[bold red]error:[/] {exc}")
        return 1
    finally:
        # A second Ctrl-C or SIGTERM (uv and `timeout` forward theirs too) must not cut the cleanup short.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for what, proc in reversed(started):
            ps.stop_process(proc)
            if what == "worker":
                forget_worker(cfg.home, proc)
        state = ps.read_state(cfg.home)
        if server_started(started) and state is not None and state.pid == started[0][1].pid:
            ps.state_path(cfg.home).unlink(missing_ok=True)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, previous)


def _replace_orphan_worker(home: Path, console: Console) -> None:
    """A worker left by a `hub serve` killed with -9 would run beside the new one: stop it first."""
    pid = stop_orphan_worker(home)
    if pid is not None:
        console.print(f"stopped the worker (pid {pid}) that an earlier, killed hub serve left running")


def server_started(started: list[tuple[str, subprocess.Popen]]) -> bool:
    return bool(started) and started[0][0] == "Prefect server"
