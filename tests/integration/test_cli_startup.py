"""What a `hub` command imports and starts, in a process of its own (the CLI's start-up cost; not timed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.factories import order, write_jsonl

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
# The server's own modules. (fastapi.encoders does get imported: Prefect serializes flow parameters with it.)
SERVER_SIDE = ("prefect.server.api", "prefect.server.database", "prefect.server.models", "uvicorn", "sqlalchemy",
               "alembic", "aiosqlite", "asyncpg")  # fmt: skip

# Runs `hub ARGS…` as the console script does; at exit (after the command's own exit hooks) writes the
# modules it imported and the temporary server it started, if any, to the file in HUB_PROBE.
PROBE = """
import atexit, json, os, sys
def report():
    from deployments import ephemeral
    mods = sorted(m for m in sys.modules if m.split('.')[0] in {'prefect', 'fastapi', 'uvicorn', 'sqlalchemy',
                                                                 'alembic', 'aiosqlite', 'asyncpg'})
    with open(os.environ['HUB_PROBE'], 'w') as f:
        json.dump({'modules': mods, 'api_url': os.environ.get('PREFECT_API_URL'),
                   'still_running': ephemeral._server is not None}, f)
atexit.register(report)
sys.argv = ['hub', *sys.argv[1:]]
from deployments.cli import main
main()
"""


def run_hub(args: list[str], env: dict[str, str], probe: Path) -> tuple[subprocess.CompletedProcess, dict]:
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, *args], env={**env, "HUB_PROBE": str(probe)}, cwd=ROOT,
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    return proc, json.loads(probe.read_text())


@pytest.fixture
def cli_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API_URL", "HUB_"))}
    env.update(
        HUB_HOME=str(tmp_path / "home"),
        PREFECT_HOME=str(tmp_path / "prefect"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="300",
    )
    return env


def test_help_imports_no_prefect_and_no_server_modules(cli_env, tmp_path):
    proc, seen = run_hub(["--help"], cli_env, tmp_path / "probe.json")
    assert proc.returncode == 0 and "import-file" in proc.stdout
    assert seen["modules"] == [] and seen["api_url"] is None  # no Prefect, no server started


def test_import_file_on_ephemeral_prefect_keeps_the_server_out_of_the_command(cli_env, db_url, tmp_path):
    """With no server up, the command starts Prefect's temporary server as a process of its own (while it
    imports) and never imports the server (FastAPI, SQLAlchemy) itself; the server is gone at exit."""
    f = write_jsonl(tmp_path / "o.jsonl.gz", [order(str(i)) for i in range(3)])
    proc, seen = run_hub(["import-file", "orders", str(f)], {**cli_env, "HUB_DATABASE_URL": db_url}, tmp_path / "p")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "inserted" in proc.stdout
    assert not [m for m in seen["modules"] if m.startswith(SERVER_SIDE)], seen["modules"]
    assert "prefect" in seen["modules"]  # the flow did run under Prefect, on the server started for it
    assert seen["api_url"] and not seen["still_running"]
    with pytest.raises(OSError):
        urllib.request.urlopen(f"{seen['api_url']}/health", timeout=2)
