"""The customer metrics flow and `hub metrics` (Prefect under its test harness): settings, artifacts, CLI."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from psycopg.types.json import Jsonb
from typer.testing import CliRunner

from db.connection import libpq_url
from db.metrics.compute import LOCK_NAMESPACE
from db.metrics.rules import MetricsSettingsError
from deployments.cli import app
from flows.metrics import recalculate_customer_metrics
from tests.integration.test_metrics import T0, add_orders, ten_customers

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect_harness")]
runner = CliRunner()


@pytest.fixture
def conn(hub_env):
    with psycopg.connect(libpq_url(hub_env), autocommit=True) as c:
        yield c


def set_setting(conn: psycopg.Connection, key: str, value: object) -> None:
    conn.execute(
        "INSERT INTO settings (key, value) VALUES (%s, %s) ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
        (key, Jsonb(value)),
    )


def artifact_rows(key: str) -> list[dict]:
    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])), limit=1, sort="CREATED_DESC"
        )
    data = arts[0].data
    return json.loads(data) if isinstance(data, str) else data


def test_flow_uses_stored_settings_and_publishes_counts_only(hub_env, conn):
    ten_customers(conn)
    add_orders(
        conn,
        {"code": "x", "created_at": T0, "email": "c01@x.cz", "status_id": 7},
        {"code": "y", "created_at": T0, "email": None, "customer_guid": None},
    )
    set_setting(conn, "cancelled_statuses", [7])
    set_setting(
        conn,
        "rfm_segments",
        [{"segment": "Recent", "r": [4, 5], "fm": [1, 5]}, {"segment": "Old", "r": [1, 3], "fm": [1, 5]}],
    )
    out = recalculate_customer_metrics(as_of=T0 + timedelta(days=30))
    assert out["cancelled_statuses"] == [-4, 7] and out["mode"] == "full"
    assert [(r["segment"], r["customers"], r["new"]) for r in out["segments"]] == [("Recent", 4, 4), ("Old", 6, 6)]
    assert out["unattributed_orders"] == 1

    segments = artifact_rows("customer-metrics-segments")
    assert segments[-1] == {
        "segment": "total",
        "customers": 10,
        "previous": 0,
        "moved_in": 0,
        "moved_out": 0,
        "new": 10,
        "removed": 0,
    }
    summary = {r["counter"]: r["value"] for r in artifact_rows("customer-metrics-summary")}
    assert summary["unattributed_orders"] == 1 and summary["customers"] == 10
    published = json.dumps([segments, summary, artifact_rows("customer-metrics-movement")])
    assert "@" not in published  # no e-mails (or any other identity) in artifacts


def test_flow_parameters_override_settings(hub_env, conn):
    ten_customers(conn)
    set_setting(conn, "rfm_segments", [{"segment": "Never used", "r": [1, 5], "fm": [1, 5]}])
    out = recalculate_customer_metrics(segment_rules=[{"segment": "Everyone", "r": [1, 5], "fm": [1, 5]}])
    assert [r["segment"] for r in out["segments"]] == ["Everyone"]


def test_malformed_setting_stops_the_flow_with_a_fix(hub_env, conn):
    set_setting(conn, "rfm_segments", {"Champions": "5"})
    with pytest.raises(MetricsSettingsError, match="rfm_segments"):
        recalculate_customer_metrics()


def test_cli_prints_segments_and_movement(hub_env, conn):
    ten_customers(conn)
    res = runner.invoke(app, ["metrics", "--as-of", "2026-02-01T00:00:00+01:00"])
    assert res.exit_code == 0, res.output
    assert "Customer segments (full run" in res.output and "Loyal Customers" in res.output
    assert "0 customers moved between segments" in res.output
    assert "revenue 0 CZK." in res.output  # the shop's base currency (orders with exchange rate 1)
    add_orders(conn, {"code": "new", "created_at": datetime(2026, 1, 20, tzinfo=UTC), "email": "c01@x.cz"})
    res = runner.invoke(app, ["metrics", "--as-of", "2026-02-01T00:00:00+01:00"])
    assert res.exit_code == 0 and "incremental run" in res.output
    res = runner.invoke(app, ["metrics", "--full"])
    assert res.exit_code == 0 and "full run" in res.output


def test_cli_exit_codes(hub_env, conn):
    assert runner.invoke(app, ["metrics", "--as-of", "yesterday"]).exit_code == 1
    conn.execute("SELECT pg_advisory_lock(%s, hashtext(current_schema()))", (LOCK_NAMESPACE,))
    res = runner.invoke(app, ["metrics"])
    assert res.exit_code == 75 and "in progress" in res.output
