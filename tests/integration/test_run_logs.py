"""The runs' INFO lines reach the Prefect API (each run's logs in the UI); the terminal stays quiet."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowFilter,
    FlowFilterName,
    FlowRunFilter,
    FlowRunFilterStartTime,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.settings import PREFECT_API_URL

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect_harness")]


def _runs_since(flow: str, since: datetime):
    with get_client(sync_client=True) as client:
        return client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=[flow])),
            flow_run_filter=FlowRunFilter(start_time=FlowRunFilterStartTime(after_=since)),
        )


def _logs(flow_run_id) -> list:  # noqa: ANN001
    with get_client(sync_client=True) as client:
        return client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))


def test_a_cli_run_sends_its_info_lines_to_the_api_and_prints_none(db_url):
    started = datetime.now(UTC)
    # The CLI as a user runs it: a fresh process, none of the hub's or Prefect's logging variables set.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_LOGGING_", "HUB_"))}
    env |= {"HUB_DATABASE_URL": db_url, "PREFECT_API_URL": PREFECT_API_URL.value()}
    env["HUB_HOME"] = os.environ.get("HUB_HOME", "")
    out = subprocess.run(
        [sys.executable, "-m", "deployments.cli", "metrics"], env=env, capture_output=True, text=True, timeout=180
    )
    assert out.returncode == 0, out.stderr
    terminal = out.stdout + out.stderr
    assert " INFO " not in terminal and "| INFO" not in terminal, terminal

    (run,) = _runs_since("recalculate-customer-metrics", started)
    logs = _logs(run.id)
    info = [log for log in logs if log.level == 20]
    # Prefect's own lines (run started / finished), the flow's run logger and a db module's logger.
    assert any(log.name == "prefect.flow_runs" and "Finished in state Completed" in log.message for log in info), logs
    # A db module's logger, inside the run: its line is attached to the run.
    assert any(log.name == "db.metrics.compute" and "customer metrics" in log.message for log in info), [
        (log.name, log.message) for log in logs
    ]


def test_a_run_is_named_from_its_parameters(hub_env):
    from flows.indexes import ensure_indexes

    started = datetime.now(UTC)
    ensure_indexes(dry_run=True)
    assert [r.name for r in _runs_since("ensure-indexes", started)] == ["indexes-dry-run"]
