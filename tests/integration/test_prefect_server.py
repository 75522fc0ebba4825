"""hub serve's server pieces: how CLI commands find it, its database URL, pg_trgm, stopping a process tree."""

from __future__ import annotations

import os
import subprocess
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, HTTPServer

import psutil
import psycopg
import pytest
from psycopg import sql

from db.connection import ensure_database, libpq_url, with_database
from deployments import prefect_server as ps


class _Health(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.send_response(200 if self.path == "/api/health" else 404)
        self.end_headers()
        self.wfile.write(b"true")

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def health_server():
    httpd = HTTPServer(("127.0.0.1", 0), _Health)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_port}/api"
    httpd.shutdown()


def test_cli_uses_the_server_of_hub_serve_when_it_is_up(tmp_path, monkeypatch, health_server):
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    assert ps.use_running_server(tmp_path) is None and "PREFECT_API_URL" not in os.environ  # no state file
    ps.write_state(tmp_path, ps.ServerState(health_server, os.getpid(), "2026-11-30T00:00:00+00:00"))
    assert ps.use_running_server(tmp_path) == health_server
    assert os.environ["PREFECT_API_URL"] == health_server


def test_a_stale_state_file_is_ignored(tmp_path, monkeypatch, health_server):
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    dead = subprocess.Popen(["true"])
    dead.wait()
    ps.write_state(tmp_path, ps.ServerState(health_server, dead.pid, "2026-11-30T00:00:00+00:00"))
    assert ps.use_running_server(tmp_path) is None  # the recorded server process is gone
    ps.write_state(tmp_path, ps.ServerState("http://127.0.0.1:9/api", os.getpid(), "2026-11-30T00:00:00+00:00"))
    assert ps.use_running_server(tmp_path) is None  # alive, but nothing answers there
    assert "PREFECT_API_URL" not in os.environ


def test_prefect_api_url_wins(tmp_path, monkeypatch, health_server):
    monkeypatch.setenv("PREFECT_API_URL", "http://elsewhere:4200/api")
    ps.write_state(tmp_path, ps.ServerState(health_server, os.getpid(), "2026-11-30T00:00:00+00:00"))
    assert ps.use_running_server(tmp_path) == "http://elsewhere:4200/api"


def test_asyncpg_url():
    assert (
        ps.asyncpg_url("postgresql://postgres:@/prefect?host=/tmp/h/pg")
        == "postgresql+asyncpg://postgres:@/prefect?host=%2Ftmp%2Fh%2Fpg"
    )
    assert ps.asyncpg_url("postgresql://u:p@db:5432/prefect?sslmode=require") == (
        "postgresql+asyncpg://u:p@db:5432/prefect?ssl=require"
    )
    with pytest.raises(ps.ServerError, match="target_session_attrs") as exc:
        ps.asyncpg_url("postgresql://u:secret@db/prefect?target_session_attrs=read-write")
    assert "secret" not in str(exc.value)


def test_prefect_database_can_create_pg_trgm(pg_server_url):
    """What Prefect's migrations do first, on the tests' server (the embedded 18 needs the shim)."""
    name = f"hub_prefect_{uuid.uuid4().hex[:8]}"
    url = ensure_database(pg_server_url, name)
    try:
        ps.ensure_trgm(url)
        with psycopg.connect(libpq_url(url), autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
            conn.execute("CREATE TABLE flow (name text)")
            conn.execute("CREATE INDEX ON flow USING gin (name gin_trgm_ops)")
            conn.execute("INSERT INTO flow SELECT 'flow-' || g FROM generate_series(1, 100) g")
            assert conn.execute("SELECT count(*) FROM flow WHERE name ILIKE '%%w-9%%'").fetchone()[0] == 11
    finally:
        with psycopg.connect(libpq_url(with_database(pg_server_url, "postgres")), autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def test_stop_process_leaves_no_process_of_the_tree(tmp_path):
    proc = subprocess.Popen(
        ["sh", "-c", "trap '' TERM; sleep 300 & sleep 300 & wait"], start_new_session=True
    )  # ignores SIGTERM: only the SIGKILL after the timeout ends it
    time.sleep(0.5)
    tree = [proc.pid, *(c.pid for c in psutil.Process(proc.pid).children(recursive=True))]
    assert len(tree) == 3
    ps.stop_process(proc, timeout=1)
    time.sleep(0.2)
    assert [p for p in tree if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE] == []


def test_stop_process_signals_nothing_once_popen_has_reaped_the_process(monkeypatch):
    """Review L11: after the reap the pid (and the process group id it led) may be recycled."""
    proc = subprocess.Popen(["true"], start_new_session=True)
    proc.wait()  # reaped: returncode set
    calls = []

    def no_process(pid):
        calls.append(("psutil.Process", pid))
        raise psutil.NoSuchProcess(pid)

    monkeypatch.setattr(psutil, "Process", no_process)
    monkeypatch.setattr(os, "killpg", lambda pgid, sig: calls.append(("killpg", pgid, sig)))
    monkeypatch.setattr(os, "kill", lambda pid, sig: calls.append(("kill", pid, sig)))
    ps.stop_process(proc, timeout=1)
    assert calls == []


# --- review L10: no open API without auth -------------------------------------------------------------------


@pytest.mark.parametrize(("host", "loopback"), [("127.0.0.1", True), ("localhost", True), ("::1", True),
                                                ("127.0.0.2", True), ("0.0.0.0", False), ("::", False),
                                                ("no-such-host.invalid", False)])  # fmt: skip
def test_is_loopback(host, loopback):
    assert ps.is_loopback(host) is loopback


def test_open_host_is_refused_without_api_auth_and_taken_with_it(monkeypatch):
    monkeypatch.delenv(ps.AUTH_VAR, raising=False)
    monkeypatch.delenv(ps.CLIENT_AUTH_VAR, raising=False)
    ps.check_listen_host("127.0.0.1")
    with pytest.raises(ps.ServerError, match="refusing --host 0.0.0.0.*PREFECT_SERVER_API_AUTH_STRING"):
        ps.check_listen_host("0.0.0.0")
    monkeypatch.setenv(ps.AUTH_VAR, "hub:s3cret")
    ps.check_listen_host("0.0.0.0")
    ps.use_server_auth()  # this process and its worker then authenticate to the server
    assert os.environ[ps.CLIENT_AUTH_VAR] == "hub:s3cret"


def test_hub_serve_on_an_open_host_without_auth_starts_nothing(hub_env, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from deployments.cli import app
    from flows.config import get_config

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.delenv(ps.AUTH_VAR, raising=False)
    monkeypatch.setenv("HUB_HOME", str(tmp_path))
    get_config.cache_clear()

    def started(*args, **kwargs):
        pytest.fail("hub serve made something for a server it must refuse")

    monkeypatch.setattr(ps, "prefect_database_url", started)
    monkeypatch.setattr(ps, "prefect_database", started)
    monkeypatch.setattr(ps, "start_server", started)
    res = CliRunner().invoke(app, ["serve", "--host", "0.0.0.0"])
    assert res.exit_code == 1, res.output
    assert "refusing --host 0.0.0.0" in res.output and "PREFECT_SERVER_API_AUTH_STRING" in res.output
    get_config.cache_clear()


# --- review design 7: Prefect's database is not put on the shop's server unless asked -----------------------


class _EmbeddedAsked(Exception):
    pass


def _exists(server_url: str, name: str) -> bool:
    with psycopg.connect(libpq_url(server_url), autocommit=True) as conn:
        return conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is not None


def _drop(server_url: str, name: str) -> None:
    with psycopg.connect(libpq_url(with_database(server_url, "postgres")), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def prefect_db_name(hub_env, monkeypatch):
    """A name of its own for the ``prefect`` database, so the test server's other databases don't matter."""
    name = f"hub_prefect_{uuid.uuid4().hex[:8]}"
    monkeypatch.setattr(ps, "PREFECT_DATABASE", name)
    monkeypatch.delenv("HUB_PREFECT_DATABASE_URL", raising=False)
    for var in ps._URL_VARS:
        monkeypatch.delenv(var, raising=False)
    yield name
    _drop(hub_env, name)


def _config():
    from flows.config import get_config

    get_config.cache_clear()
    return get_config()


def test_with_hub_database_url_prefect_goes_to_the_embedded_server_not_the_shops(hub_env, prefect_db_name, monkeypatch):
    import db.embedded

    def embedded(home):
        raise _EmbeddedAsked(home)

    monkeypatch.setattr(db.embedded, "embedded_server_url", embedded)
    with pytest.raises(_EmbeddedAsked):
        ps.prefect_database_url(_config())
    assert not _exists(hub_env, prefect_db_name)  # before: created on the shop's server without asking


def test_a_prefect_database_an_earlier_hub_serve_made_on_the_hub_server_is_kept(hub_env, prefect_db_name):
    with psycopg.connect(libpq_url(hub_env), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(prefect_db_name)))
    server, name, where = ps.prefect_database_server(_config())
    assert (server, name) == (hub_env, prefect_db_name) and "HUB_DATABASE_URL" in where


def test_hub_prefect_database_url_names_where_it_goes(hub_env, prefect_db_name, monkeypatch):
    chosen = f"hub_prefect_{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("HUB_PREFECT_DATABASE_URL", with_database(hub_env, chosen))
    try:
        url, where = ps.prefect_database(_config())
        assert url.startswith("postgresql+asyncpg://") and f"/{chosen}" in url and "HUB_PREFECT_DATABASE_URL" in where
        assert _exists(hub_env, chosen) and not _exists(hub_env, prefect_db_name)
    finally:
        _drop(hub_env, chosen)
