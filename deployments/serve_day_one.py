"""``hub serve`` on day one: with no Shoptet token, the deployments that call the Shoptet API wait paused.

Registered active, they would fail on their first schedule (``HUB_SHOPTET_TOKEN is not set``) every 15
minutes and turn the dashboard red, while the jobs that need only the database (metrics, backups,
partitions, indexes, the health page) run fine. So without a token they are registered paused and the
first lines of ``hub serve`` say so; with a token each ``hub serve`` resumes them. The worker gets its
environment from ``hub serve``, so setting the token and starting ``hub serve`` again is the one step.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from flows.config import HubConfig

# prefect.yaml entrypoints whose flows call the Shoptet API, and their flow names (Prefect addresses a
# deployment as "<flow>/<deployment>"); tests/unit/test_serve_day_one.py checks both against the flows.
API_ENTRYPOINTS = {
    "flows/snapshot.py:import_snapshot": "import-snapshot",
    "flows/fetch.py:fetch_new_orders": "fetch-new-orders",
    "flows/fetch.py:fetch_changes": "fetch-changes",
    "flows/failed.py:retry_failed_snapshots": "retry-failed-snapshots",
}
RESUME = "HUB_SHOPTET_TOKEN=<your private API token> hub serve"


def has_shop_token(cfg: HubConfig) -> bool:
    return cfg.shoptet_token is not None or cfg.shoptet_oauth_token is not None


def api_deployments(checkout: Path) -> list[str]:
    """``flow/deployment`` names of the scheduled deployments of ``prefect.yaml`` that call the Shoptet API."""
    spec = yaml.safe_load((checkout / "prefect.yaml").read_text())
    return [
        f"{API_ENTRYPOINTS[d['entrypoint']]}/{d['name']}"
        for d in spec["deployments"]
        if d["entrypoint"] in API_ENTRYPOINTS and d.get("schedules")
    ]


def notice(cfg: HubConfig, checkout: Path) -> list[str]:
    """What ``hub serve`` says first about the Shoptet API deployments (nothing when a token is set)."""
    if has_shop_token(cfg):
        return []
    names = [n.split("/", 1)[1] for n in api_deployments(checkout)]
    return [
        f"[yellow]no HUB_SHOPTET_TOKEN[/]: the {len(names)} deployments that call the Shoptet API are registered "
        f"[bold]paused[/] ({', '.join(names)}); the database jobs run on schedule.",
        f"to resume them: {RESUME}",
    ]


def set_api_deployments_paused(cfg: HubConfig, checkout: Path) -> tuple[bool, list[str]]:
    """Pause (no token) or resume (token) the Shoptet API deployments; ``(paused, those changed)``."""
    from prefect.client.orchestration import get_client

    pause = not has_shop_token(cfg)
    changed = []
    with get_client(sync_client=True) as client:
        for name in api_deployments(checkout):
            deployment = client.read_deployment_by_name(name)
            if bool(deployment.paused) == pause:
                continue
            (client.pause_deployment if pause else client.resume_deployment)(deployment.id)
            changed.append(name.split("/", 1)[1])
    return pause, changed


def report_paused(cfg: HubConfig, checkout: Path) -> str:
    """After ``deploy``: pause or resume, and the line that says what changed."""
    paused, changed = set_api_deployments_paused(cfg, checkout)
    if paused:
        return f"Shoptet API deployments paused until a token is set ({RESUME})"
    return f"Shoptet API deployments active (resumed: {', '.join(changed)})" if changed else ""
