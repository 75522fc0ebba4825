"""The ensure_indexes flow and `hub indexes` (Prefect under its test harness): lock, artifact, CLI."""

from __future__ import annotations

import json

import psycopg
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from typer.testing import CliRunner

from db.connection import libpq_url
from deployments.cli import app
from flows.indexes import IndexMaintenanceError, ensure_indexes

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect_harness")]
runner = CliRunner()


@pytest.fixture
def conn(hub_env):
    with psycopg.connect(libpq_url(hub_env), autocommit=True) as c:
        yield c


def artifact_rows(key: str) -> list[dict]:
    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])), limit=1, sort="CREATED_DESC"
        )
    data = arts[0].data
    return json.loads(data) if isinstance(data, str) else data


def valid(conn: psycopg.Connection, name: str) -> bool | None:
    row = conn.execute("SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass(%s)", (name,)).fetchone()
    return row[0] if row else None


def test_flow_builds_reports_and_then_does_nothing(hub_env, conn, monkeypatch):
    from datetime import timedelta

    from db.indexes import ensure

    monkeypatch.setattr(ensure, "UNUSED_WINDOW", timedelta(0))  # a database made minutes ago
    out = ensure_indexes()
    assert ("built", "ix_product_variants_ean") in {(a["action"], a["index"]) for a in out["actions"]}
    assert valid(conn, "ix_product_variants_ean") and valid(conn, "ix_order_items_code")
    rows = artifact_rows("ensure-indexes")
    assert {"action": "built", "index": "ix_product_variants_ean", "table": "product_variants"}.items() <= next(
        r for r in rows if r["index"] == "ix_product_variants_ean"
    ).items()
    assert any(r["action"] == "unused" for r in rows)
    assert ensure_indexes()["actions"] == []


def test_flow_fails_loudly_when_an_index_cannot_be_rebuilt(hub_env, conn):
    conn.execute("INSERT INTO orders (code, created_at, status_id, content_hash) VALUES ('a', now(), 1, 'h')")
    conn.execute("INSERT INTO orders (code, created_at, status_id, content_hash) VALUES ('b', now(), 1, 'h')")
    with pytest.raises(psycopg.errors.UniqueViolation):
        conn.execute("CREATE UNIQUE INDEX CONCURRENTLY ux_orders_status ON orders (status_id)")
    with pytest.raises(IndexMaintenanceError, match="ux_orders_status"):
        ensure_indexes()
    assert valid(conn, "ix_product_variants_ean")  # the rest was done all the same


def test_cli_dry_run_changes_nothing_then_builds(hub_env, conn):
    result = runner.invoke(app, ["indexes", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "ix_product_variants_ean" in result.output and "dry run: nothing was changed" in result.output
    assert "would build ix_product_variants_ean on product_variants" in result.output and "would:" not in result.output
    assert "unused (never scanned" not in result.output and "once the usage statistics cover 7 days" in result.output
    assert valid(conn, "ix_product_variants_ean") is None
    result = runner.invoke(app, ["indexes"])
    assert result.exit_code == 0, result.output
    assert valid(conn, "ix_product_variants_ean")
    result = runner.invoke(app, ["indexes"])
    assert result.exit_code == 0, result.output
    assert "nothing to do" in result.output
