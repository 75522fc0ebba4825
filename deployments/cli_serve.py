"""``hub serve``, ``hub bootstrap`` and ``hub deploy``: the hub on a Prefect server."""

from __future__ import annotations

import sys

import typer
from rich.console import Console

from deployments.options import fail, quiet_prefect

console = Console(stderr=True, soft_wrap=True)  # messages are not cut at 80 columns (a log file)


def serve_cmd(
    port: int = typer.Option(4200, help="Port of the Prefect server (UI and API) when it is started here."),
    host: str = typer.Option(
        "127.0.0.1",
        help="Interface the Prefect server listens on; beyond loopback only with PREFECT_SERVER_API_AUTH_STRING set.",
    ),
) -> None:
    """Run everything on this machine: Prefect server (UI), every deployment with its schedule, a worker.

    Reuses a server that is already up (PREFECT_API_URL, or an earlier `hub serve`). Ctrl-C or SIGTERM
    stops what it started.
    """
    quiet_prefect()
    from deployments.serve import run_serve

    sys.exit(run_serve(host=host, port=port, console=console))


def bootstrap_cmd() -> None:
    """Migrations, every job lock's concurrency limit, the work pool and the partitions due (idempotent)."""
    quiet_prefect()
    from deployments.bootstrap import DeployError, bootstrap

    try:
        done = bootstrap()
    except DeployError as exc:
        fail(str(exc))
    for what, action in done:
        console.print(f"{what}: {action}")


def deploy_cmd(
    name: list[str] = typer.Option([], "--name", help="Only this deployment (repeatable); default: all."),
) -> None:
    """Register the deployments of prefect.yaml with the server PREFECT_API_URL points at (or hub serve's)."""
    quiet_prefect()
    from deployments.bootstrap import DeployError, deploy
    from deployments.checkout import CheckoutError

    try:
        deploy(names=name or None)
    except (DeployError, CheckoutError) as exc:
        fail(str(exc))
    console.print("deployed " + (", ".join(name) if name else "every deployment of prefect.yaml"))
