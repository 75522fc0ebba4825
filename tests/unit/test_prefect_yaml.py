"""prefect.yaml deploys every flow in flows/, on the schedules of issue 12, each parameter described."""

from __future__ import annotations

import ast
import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from prefect.cli.deploy._models import PrefectYamlModel
from prefect.server.schemas.schedules import CronSchedule
from prefect.utilities.callables import parameter_schema_from_entrypoint

from deployments.checkout import CheckoutError, resolve_checkout, use_checkout

ROOT = Path(__file__).resolve().parents[2]
DOC = yaml.safe_load((ROOT / "prefect.yaml").read_text())
DEPLOYMENTS = {d["name"]: d for d in DOC["deployments"]}
START = datetime(2027, 1, 1, tzinfo=UTC)  # a Friday; 2027 has no leap day


def _flows() -> set[str]:
    """``path:function`` of every function decorated with ``@flow`` / ``@flow(...)`` in flows/."""
    found = set()
    for path in sorted((ROOT / "flows").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.FunctionDef):
                continue
            for dec in node.decorator_list:
                target = dec.func if isinstance(dec, ast.Call) else dec
                if (isinstance(target, ast.Name) and target.id == "flow") or (
                    isinstance(target, ast.Attribute) and target.attr == "flow"
                ):
                    found.add(f"flows/{path.name}:{node.name}")
    return found


def _fires(name: str, days: float) -> list[datetime]:
    """When the deployment's schedules fire during ``days`` from START (as Prefect's scheduler computes)."""
    out: set[datetime] = set()
    for s in DEPLOYMENTS[name].get("schedules") or []:
        cron = CronSchedule(cron=s["cron"], timezone=s["timezone"], day_or=s.get("day_or", True))
        dates = asyncio.run(cron.get_dates(n=100_000, start=START, end=START + timedelta(days=days)))
        out |= {datetime.fromtimestamp(d.timestamp(), UTC) for d in dates}  # plain datetimes
    return sorted(out)


def test_the_file_is_a_valid_prefect_project():
    PrefectYamlModel.model_validate(DOC)


def test_every_flow_has_a_deployment():
    flows = _flows()
    assert len(flows) >= 10  # the AST scan found the flows (a broken scan must not pass vacuously)
    deployed = {d["entrypoint"] for d in DOC["deployments"]}
    assert flows - deployed == set(), "flows without a deployment in prefect.yaml"
    assert deployed - flows == set(), "deployments whose entrypoint is no @flow in flows/"


@pytest.mark.parametrize("name", sorted(DEPLOYMENTS))
def test_deployment_runs_on_the_process_pool_one_at_a_time(name):
    d = DEPLOYMENTS[name]
    assert d["work_pool"]["name"] == "hub-process"
    assert d["concurrency_limit"]["limit"] == 1
    assert d["concurrency_limit"]["collision_strategy"] in ("ENQUEUE", "CANCEL_NEW")
    assert d.get("description"), "a deployment says what it is for in the UI"
    for s in d.get("schedules") or []:
        assert s["timezone"] == "UTC"


@pytest.mark.parametrize("name", sorted(DEPLOYMENTS))
def test_every_parameter_is_described_and_scheduled_runs_have_what_they_need(name):
    d = DEPLOYMENTS[name]
    schema = parameter_schema_from_entrypoint(d["entrypoint"])
    undescribed = [p for p, spec in schema.properties.items() if not (spec.get("description") or "").strip()]
    assert undescribed == [], f"parameters of {d['entrypoint']} without a description (Args: in its docstring)"
    given = set(d.get("parameters") or {})
    assert given <= set(schema.properties), "prefect.yaml sets a parameter the flow does not have"
    if d.get("schedules"):
        assert set(schema.required or []) <= given, "a scheduled run would lack a required parameter"


@pytest.mark.parametrize(
    ("name", "per_day"),
    [
        ("orders-full-snapshot", 1),
        ("customers-full-snapshot", 1),
        ("products-full-snapshot", 1),
        ("fetch-new-orders", 96),
        ("customer-changes", 24),
        ("product-changes", 24),
        ("customer-metrics", 24),
        ("retry-failed-snapshots", 24),
        ("hub-status", 96),
    ],
)
def test_regular_schedules_fire_evenly(name, per_day):
    fires = _fires(name, 7)
    assert len(fires) == 7 * per_day
    gaps = {b - a for a, b in zip(fires, fires[1:], strict=False)}
    assert gaps == {timedelta(days=1) / per_day}


def test_partition_maintenance_runs_at_each_quarter_start_and_weekly():
    fires = _fires("partition-maintenance", 365)
    quarter_starts = {datetime(2027, m, 1, tzinfo=UTC).date() for m in (1, 4, 7, 10)}
    assert quarter_starts <= {f.date() for f in fires}
    weekly = [f for f in fires if f.date() not in quarter_starts]
    assert {(b - a) for a, b in zip(weekly, weekly[1:], strict=False)} <= {timedelta(days=7)}
    assert len(weekly) >= 50


def test_ensure_indexes_runs_weekly():
    fires = _fires("ensure-indexes", 28)
    assert len(fires) == 4 and {b - a for a, b in zip(fires, fires[1:], strict=False)} == {timedelta(days=7)}


def test_full_snapshots_finish_their_start_before_the_nightly_backup():
    for name in ("orders-full-snapshot", "customers-full-snapshot", "products-full-snapshot"):
        assert all(f.hour < 2 for f in _fires(name, 2))


def test_pull_step_uses_hub_checkout_or_the_installed_checkout(tmp_path, monkeypatch):
    steps = DOC["pull"]
    assert list(steps[0]) == ["deployments.checkout.use_checkout"]
    monkeypatch.delenv("HUB_CHECKOUT", raising=False)
    assert use_checkout("") == {"directory": str(ROOT)}  # `{{ $HUB_CHECKOUT }}` of an unset variable
    monkeypatch.setenv("HUB_CHECKOUT", str(ROOT))
    assert resolve_checkout("") == ROOT


def test_pull_step_says_what_is_wrong(tmp_path, monkeypatch):
    monkeypatch.setenv("HUB_CHECKOUT", str(tmp_path / "missing"))
    with pytest.raises(CheckoutError, match="is not a folder on this worker: set HUB_CHECKOUT"):
        use_checkout("")
    with pytest.raises(CheckoutError, match="is not a checkout of the hub .no prefect.yaml, flows there."):
        use_checkout(str(tmp_path))
