"""A refused file prints one clear error line, not a Prefect traceback first (issue 16 §3)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.factories import order, write_jsonl

pytestmark = pytest.mark.integration


def hub(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "deployments.cli", *args], capture_output=True, text=True, env=env, timeout=300
    )


@pytest.fixture
def env(db_url, tmp_path, prefect_harness):
    from prefect.settings import PREFECT_API_URL

    e = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API", "HUB_"))}
    e.update(HUB_DATABASE_URL=db_url, HUB_HOME=str(tmp_path / "home"), PREFECT_HOME=str(tmp_path / "prefect"))
    e["PREFECT_API_URL"] = PREFECT_API_URL.value()  # the test harness's server: no ephemeral one per command
    e.update(PREFECT_SERVER_ANALYTICS_ENABLED="false", COLUMNS="1000")
    return e


def test_too_many_rejects_is_one_error_line(env, tmp_path):
    bad = write_jsonl(tmp_path / "bad.jsonl.gz", [order("1"), b"{not json", b"[1]"])
    done = hub("import-file", "orders", str(bad), env=env)
    out = done.stdout + done.stderr
    assert done.returncode == 1, out
    assert "Traceback" not in out and "Finished in state" not in out, out
    errors = [ln for ln in out.splitlines() if ln.strip()]
    assert len(errors) == 1 and errors[0].startswith("error: 2 of 3 lines rejected"), out


def test_a_refused_mass_delete_is_one_error_line(env, tmp_path):
    four = write_jsonl(tmp_path / "four.jsonl.gz", [order(str(n)) for n in range(4)])
    assert hub("import-file", "orders", str(four), env=env).returncode == 0
    one = write_jsonl(tmp_path / "one.jsonl.gz", [order("0")])
    done = hub("import-file", "orders", str(one), "--full", env=env)
    out = done.stdout + done.stderr
    lines = [ln for ln in out.splitlines() if ln.strip()]
    assert done.returncode == 1 and "Traceback" not in out, out
    assert len(lines) == 1 and lines[0].startswith("error: full snapshot of orders would delete 3 of the 4"), out
