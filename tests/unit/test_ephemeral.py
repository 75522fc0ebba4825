"""deployments/ephemeral.py without Prefect: a stand-in server process and a stand-in health endpoint."""

from __future__ import annotations

import io
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from rich.console import Console

from deployments import ephemeral


@pytest.fixture
def isolated(monkeypatch):
    """No Prefect imported as far as ``start`` can tell, no server in use, and nothing left running."""
    monkeypatch.setattr(sys, "modules", {k: v for k, v in sys.modules.items() if k.split(".")[0] != "prefect"})
    for var in ("PREFECT_API_URL", *ephemeral._OFF):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(ephemeral, "_server", None)
    yield monkeypatch
    ephemeral.stop()


def sleeper(*_args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


def test_waits_with_a_spinner_until_the_server_answers_then_stops_it(isolated):
    answers = iter([503, 503, 503])

    class Health(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            self.send_response(next(answers, 200) if self.path == "/api/health" else 404)
            self.end_headers()

        def log_message(self, *args):  # quiet
            pass

    http = ThreadingHTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=http.serve_forever, daemon=True).start()
    isolated.setattr(ephemeral, "_free_port", lambda: http.server_address[1])
    isolated.setattr(ephemeral, "_launch", sleeper)
    try:
        server = ephemeral.start()
        assert server is not None and ephemeral.start() is server  # idempotent
        import os

        assert os.environ["PREFECT_API_URL"] == f"http://127.0.0.1:{http.server_address[1]}/api"
        out = io.StringIO()
        ephemeral.wait_ready(Console(file=out, force_terminal=True, width=200))
        assert "Starting Prefect's temporary server" in out.getvalue()
        proc = server.proc
        ephemeral.stop()
        assert proc.poll() is not None and ephemeral._server is None
    finally:
        http.shutdown()


def test_a_server_that_exits_while_starting_is_an_error_naming_its_code(isolated):
    isolated.setattr(ephemeral, "_launch", lambda port: subprocess.Popen([sys.executable, "-c", "raise SystemExit(2)"]))
    ephemeral.start()
    with pytest.raises(RuntimeError, match="exited with code 2"):
        ephemeral.wait_ready(Console(file=io.StringIO()), timeout=60)


def test_nothing_is_started_when_a_server_is_in_use_or_ephemeral_mode_is_off(isolated):
    isolated.setattr(ephemeral, "_launch", lambda port: pytest.fail("no server may be started"))
    isolated.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")
    assert ephemeral.start() is None
    isolated.delenv("PREFECT_API_URL")
    isolated.setenv("PREFECT_SERVER_ALLOW_EPHEMERAL_MODE", "false")
    assert ephemeral.start() is None
    isolated.delenv("PREFECT_SERVER_ALLOW_EPHEMERAL_MODE")
    isolated.setattr(sys, "modules", {**sys.modules, "prefect": object()})  # settings read already
    assert ephemeral.start() is None


@pytest.mark.parametrize("where", ["profile", "PREFECT_PROFILE", "prefect.toml", "pyproject.toml", ".env"])
def test_no_temporary_server_replaces_a_server_prefects_own_settings_name(isolated, tmp_path, where):
    """`prefect cloud login` / `prefect config set PREFECT_API_URL=…` write the URL to a profile: starting a
    temporary server (and setting PREFECT_API_URL to it) would run the hub's flows and locks there instead."""
    isolated.setattr(ephemeral, "_launch", lambda port: pytest.fail("no server may be started"))
    isolated.chdir(tmp_path)
    isolated.setenv("PREFECT_HOME", str(tmp_path / "home"))
    isolated.delenv("PREFECT_PROFILES_PATH", raising=False)
    isolated.delenv("PREFECT_PROFILE", raising=False)
    (tmp_path / "home").mkdir()
    url = "https://api.prefect.cloud/api/accounts/a/workspaces/w"
    profiles = tmp_path / "home" / "profiles.toml"
    if where == "profile":
        profiles.write_text(f'active = "cloud"\n[profiles.cloud]\nPREFECT_API_URL = "{url}"\n[profiles.local]\n')
    elif where == "PREFECT_PROFILE":
        profiles.write_text(f'active = "local"\n[profiles.local]\n[profiles.cloud]\nPREFECT_API_URL = "{url}"\n')
        isolated.setenv("PREFECT_PROFILE", "cloud")
    elif where == "prefect.toml":
        (tmp_path / "prefect.toml").write_text(f'[api]\nurl = "{url}"\n')
    elif where == "pyproject.toml":
        (tmp_path / "pyproject.toml").write_text(f'[tool.prefect.api]\nurl = "{url}"\n')
    else:
        (tmp_path / ".env").write_text(f"OTHER=1\nPREFECT_API_URL='{url}'\n")
    assert ephemeral.configured_api_url() == url
    assert ephemeral.start() is None and "PREFECT_API_URL" not in __import__("os").environ


def test_a_profile_without_a_url_still_gets_the_temporary_server(isolated, tmp_path):
    isolated.chdir(tmp_path)
    isolated.setenv("PREFECT_HOME", str(tmp_path))
    isolated.delenv("PREFECT_PROFILES_PATH", raising=False)
    isolated.delenv("PREFECT_PROFILE", raising=False)
    (tmp_path / "profiles.toml").write_text('active = "local"\n[profiles.local]\nPREFECT_LOGGING_LEVEL = "INFO"\n')
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\n')
    assert ephemeral.configured_api_url() is None


def test_the_server_gets_no_hub_secrets(isolated):
    isolated.setenv("HUB_DATABASE_URL", "postgresql://u:pw@h/db")
    isolated.setenv("HUB_SHOPTET_TOKEN", "t0ken")
    isolated.setenv("PREFECT_HOME", "/tmp/x")
    seen = {}
    isolated.setattr(ephemeral.subprocess, "Popen", lambda argv, env, **kw: seen.update(env))
    ephemeral._launch(4999)
    assert "HUB_DATABASE_URL" not in seen and "HUB_SHOPTET_TOKEN" not in seen
    assert seen["PREFECT_HOME"] == "/tmp/x" and seen["PREFECT__SERVER_EPHEMERAL"] == "1"
