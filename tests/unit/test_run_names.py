"""Every flow run gets a name that says what it does; none of Prefect's random ``cuddly-badger`` names."""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

import pytest
from prefect import Flow

import flows
from flows import run_names
from flows.entities import Entity


def _flows() -> list[Flow]:
    found = {}
    for info in pkgutil.iter_modules(flows.__path__, "flows."):
        for obj in vars(importlib.import_module(info.name)).values():
            if isinstance(obj, Flow):
                found[obj.name] = obj
    return list(found.values())


def test_every_flow_in_flows_names_its_runs():
    every = _flows()
    assert len(every) >= 15  # the modules were found (grep -c "@flow" flows/*.py)
    unnamed = [f.name for f in every if f.flow_run_name is None]
    assert unnamed == []


@pytest.mark.parametrize(
    ("flow", "parameters", "expected"),
    [
        ("nightly-backup", {}, "backup-2026-12-06"),
        ("partition-maintenance", {}, "partitions-maintenance"),
        ("partition-maintenance", {"dry_run": True}, "partitions-maintenance-dry-run"),
        ("recalculate-customer-metrics", {"full": True}, "metrics-full"),
        ("recalculate-customer-metrics", {"full": False}, "metrics-incremental"),
        ("fetch-new-orders", {}, "fetch-orders-2026-12-06-1017"),
        ("ensure-indexes", {"dry_run": True}, "indexes-dry-run"),
        ("restore-partition-archive", {"path": Path("/srv/archive/order_items_2024q1.dump")}, None),
        ("forget-person", {"email": "jana@example.cz", "dry_run": False}, "forget-person"),
        ("restore-backup", {"backup": "x.dump", "target_db": "scratch"}, "restore-backup-into-scratch"),
        ("migrate-partitions", {"split": True, "dry_run": True}, "migrate-partitions-split-dry-run"),
    ],
)
def test_run_names_say_what_the_run_does(monkeypatch, flow, parameters, expected):
    from datetime import UTC, datetime

    from db import clock

    monkeypatch.setattr(run_names, "_parameters", lambda: parameters)
    (f,) = [f for f in _flows() if f.name == flow]
    with clock.simulated(lambda: datetime(2026, 12, 6, 10, 17, tzinfo=UTC)):  # the hub's now (a soak's day)
        name = f.flow_run_name()
    assert name == (expected or "restore-archive-order_items_2024q1.dump")
    assert "jana" not in name and "@" not in name


def test_templated_names_take_the_entity():
    (f,) = [f for f in _flows() if f.name == "fetch-changes"]
    assert f.flow_run_name.format(entity=Entity.customers) == "fetch-customers-changes"
