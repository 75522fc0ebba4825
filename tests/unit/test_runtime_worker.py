"""A deployment run on a worker without HUB_DATABASE_URL fails clearly instead of starting its own database."""

from __future__ import annotations

import pytest

from flows import runtime
from flows.config import HubConfig


def test_deployment_run_without_database_url_fails_with_what_to_do(monkeypatch, tmp_path):
    monkeypatch.delenv("HUB_DATABASE_URL", raising=False)
    monkeypatch.setenv("PREFECT__FLOW_RUN_ID", "0b6a3c1e-0000-4000-8000-000000000001")  # as a worker sets it
    cfg = HubConfig(home=tmp_path)
    with pytest.raises(runtime.DatabaseNotConfigured, match="HUB_DATABASE_URL is not set on this worker") as exc:
        runtime.database_url(cfg)
    assert "0b6a3c1e-0000-4000-8000-000000000001" in str(exc.value)
    assert not (tmp_path / "pg").exists(), "no embedded server was started"


def test_deployment_run_with_database_url_uses_it(monkeypatch, tmp_path):
    monkeypatch.setenv("PREFECT__FLOW_RUN_ID", "0b6a3c1e-0000-4000-8000-000000000001")
    monkeypatch.setenv("HUB_DATABASE_URL", "postgresql://hub@db.example/shop")
    assert runtime.database_url(HubConfig(home=tmp_path)) == "postgresql://hub@db.example/shop"


def test_outside_a_deployment_run_there_is_no_run_id(monkeypatch):
    monkeypatch.delenv("PREFECT__FLOW_RUN_ID", raising=False)
    assert runtime.deployment_run_id() is None
