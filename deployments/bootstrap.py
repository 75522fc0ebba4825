"""``hub bootstrap`` and ``hub deploy``: make a Prefect server ready for the hub's deployments.

Both talk to the server ``PREFECT_API_URL`` points at (or ``hub serve``'s). Bootstrap is idempotent:
migrations, every lock's concurrency limit (created or repaired: Prefect runs a body unlocked when a
limit is missing), the process work pool, and the ``order_items`` partitions due now (it creates, never
archives or drops: that is partition maintenance's job, on its schedule).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from deployments.checkout import resolve_checkout

WORK_POOL = "hub-process"


class DeployError(RuntimeError):
    pass


def ensure_work_pool(name: str = WORK_POOL) -> str:
    """The process work pool the deployments run on; created with the process worker's job template."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
    from prefect.workers.process import ProcessWorker

    with get_client(sync_client=True) as client:
        try:
            pool = client.read_work_pool(name)
        except ObjectNotFound:
            pass
        else:
            if pool.type != "process":
                raise DeployError(f"work pool {name} exists with type {pool.type!r}, not 'process'; delete it first")
            return "ok"
        try:
            client.create_work_pool(
                WorkPoolCreate(
                    name=name,
                    type="process",
                    description="Shoptet Commerce Hub: every deployment of prefect.yaml runs here",
                    base_job_template=ProcessWorker.get_default_base_job_template(),
                )
            )
        except ObjectAlreadyExists:  # created meanwhile by another bootstrap
            return "ok"
    return "created"


def ensure_partitions_now() -> list[str]:
    """Create the partitions the plan wants now (runway and data quarters), under the partition locks."""
    from flows.locks import job_lock
    from flows.partitions import LOCK_GROUPS, create_partitions, plan_partitions

    with job_lock(*LOCK_GROUPS, wait=300):
        plan = plan_partitions.fn()
        return create_partitions.fn(plan.create)


def bootstrap() -> list[tuple[str, str]]:
    """Everything the deployments need on this hub and this Prefect server; ``(what, action)`` pairs."""
    from flows import runtime
    from flows.config import get_config
    from flows.locks import ensure_limits

    cfg = get_config()
    url = runtime.database_url(cfg)
    runtime.ensure_schema(url, cfg.db_schema)
    done = [("migrations", "up to date")]
    done += list(ensure_limits(url, cfg.db_schema).items())
    done.append((f"work pool {WORK_POOL}", ensure_work_pool()))
    created = ensure_partitions_now()
    done.append(("order_items partitions", f"created {', '.join(created)}" if created else "ok"))
    return done


def deploy(checkout: Path | None = None, names: list[str] | None = None) -> None:
    """Register the deployments of ``prefect.yaml`` with the server ``PREFECT_API_URL`` points at.

    Runs ``prefect deploy`` itself (non-interactive): the file is the one source of the deployments.
    """
    api = os.environ.get("PREFECT_API_URL")
    if not api:
        raise DeployError("PREFECT_API_URL is not set and no `hub serve` server is running: nothing to deploy to")
    root = resolve_checkout(checkout)
    which = [a for n in names for a in ("--name", n)] if names else ["--all"]
    cmd = [sys.executable, "-m", "prefect", "--no-prompt", "deploy", *which, "--prefect-file", "prefect.yaml"]
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise DeployError(f"prefect deploy failed (exit {proc.returncode}):\n{(proc.stdout + proc.stderr)[-3000:]}")
