"""`hub serve` with no Shoptet token: the API deployments are registered paused, and it says how to resume."""

from __future__ import annotations

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    DeploymentFilter,
    DeploymentFilterId,
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import StateType
from prefect.settings import PREFECT_API_URL
from pydantic import SecretStr

from deployments.bootstrap import deploy, ensure_work_pool
from deployments.checkout import installed_checkout
from deployments.serve_day_one import API_ENTRYPOINTS, RESUME, api_deployments, notice, report_paused
from flows.config import HubConfig

# Its own server: the deployments registered here have schedules, not for the other modules' server.
pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("isolated_prefect_harness")]
CHECKOUT = installed_checkout()


def _deployments() -> dict[str, object]:
    with get_client(sync_client=True) as client:
        return {d.name: d for d in client.read_deployments()}


def _scheduled_runs(deployment_ids: list) -> int:
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=deployment_ids)),
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED]))
            ),
        )
    return len(runs)


def test_api_entrypoints_name_the_flows_they_point_at():
    import importlib

    for entrypoint, flow_name in API_ENTRYPOINTS.items():
        path, func = entrypoint.split(":")
        flow = getattr(importlib.import_module(path.removesuffix(".py").replace("/", ".")), func)
        assert flow.name == flow_name
    names = {n.split("/")[1] for n in api_deployments(CHECKOUT)}
    assert {"fetch-new-orders", "orders-full-snapshot", "customer-changes"} <= names
    assert not names & {"customer-metrics", "nightly-backup", "partition-maintenance", "import-file"}


def test_without_a_token_the_api_deployments_are_paused_until_serve_runs_with_one(monkeypatch):
    monkeypatch.setenv("PREFECT_API_URL", PREFECT_API_URL.value())  # `prefect deploy` runs as a child
    no_token = HubConfig(database_url=SecretStr("postgresql://x@/x"))
    lines = notice(no_token, CHECKOUT)
    assert "no HUB_SHOPTET_TOKEN" in lines[0] and "paused" in lines[0] and lines[1].endswith(RESUME)
    ensure_work_pool()
    deploy(CHECKOUT)
    assert "paused until a token is set" in report_paused(no_token, CHECKOUT)

    api = {n.split("/")[1] for n in api_deployments(CHECKOUT)}
    deployments = _deployments()
    assert {n for n, d in deployments.items() if d.paused} == api
    assert _scheduled_runs([deployments[n].id for n in api]) == 0  # nothing left to fail on schedule

    with_token = HubConfig(database_url=SecretStr("postgresql://x@/x"), shoptet_token=SecretStr("t"))
    assert notice(with_token, CHECKOUT) == []
    line = report_paused(with_token, CHECKOUT)
    assert line.startswith("Shoptet API deployments active (resumed: ") and "fetch-new-orders" in line
    assert not any(d.paused for d in _deployments().values())
    assert report_paused(with_token, CHECKOUT) == ""  # already active: nothing to say
