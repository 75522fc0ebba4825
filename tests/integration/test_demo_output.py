"""`hub demo` says which Prefect it used, links the UI, and how to point the other commands at its data."""

from __future__ import annotations

import io
import os

import pytest
from prefect.client.orchestration import get_client
from prefect.settings import PREFECT_API_URL
from rich.console import Console

from deployments.demo import DEMO_DATABASE, next_steps, run_demo
from flows.config import get_config
from tests.conftest import server_home

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect_harness")]


@pytest.mark.skipif(bool(os.environ.get("HUB_TEST_DATABASE_URL")), reason="the demo runs on the embedded server")
def test_demo_names_the_server_it_used_the_ui_and_the_commands_for_its_database(monkeypatch):
    monkeypatch.setenv("HUB_HOME", str(server_home()))  # the tests' embedded server, already up
    monkeypatch.delenv("HUB_DATABASE_URL", raising=False)
    get_config.cache_clear()
    out = io.StringIO()
    try:
        assert run_demo(orders=200, seed=3, console=Console(file=out, width=200)) == 0
    finally:
        get_config.cache_clear()
    text = out.getvalue()
    api = PREFECT_API_URL.value()
    assert f"Prefect: the running server {api}" in text and "ephemeral" not in text
    assert f"Prefect UI: {api.removesuffix('/api')}/runs" in text
    header = next(line for line in text.splitlines() if "entity" in line and "lines" in line)
    assert all(w in header for w in ("inserted", "updated", "unchanged", "deleted", "rejected", "skipped"))
    assert " new " not in header and " same " not in header
    export = next(line for line in text.splitlines() if "export HUB_DATABASE_URL=" in line)
    assert DEMO_DATABASE in export
    assert "hub status; hub metrics; hub backup" in text
    with get_client(sync_client=True) as client:  # no internal flow among the user's flows
        assert "hub-demo-warm-up" not in {f.name for f in client.read_flows()}


def test_without_a_server_the_demo_says_its_runs_are_gone():
    lines = next_steps("postgresql://hub:s3cret@db/shoptet_hub_demo", None)
    assert "ephemeral mode" in lines[0] and "hub serve" in lines[0]
    assert not any("s3cret" in line for line in lines)
    assert any("password masked" in line for line in lines)
