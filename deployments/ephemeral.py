"""Prefect's temporary (ephemeral) server for one command, started by the hub itself when no server is up.

Prefect starts it on a command's first API call, after the command has imported Prefect, and imports its
whole server (FastAPI, SQLAlchemy, the ORM models: seconds of CPU) into the command's own process just to
launch it; the wait is silent. Here the command starts the same ``uvicorn`` process (the command line and
environment of ``prefect.server.api.server.SubprocessASGIServer``) before it imports Prefect and the
flows, so the server starts while the command imports (2 cores), the command's process never imports
the server, and the wait left over shows a spinner. ``PREFECT_API_URL`` then names it, so Prefect
treats it as any running server. It is stopped when the command exits.

Nothing is started when ``PREFECT_API_URL`` is set or ``hub serve``'s server is up (``main`` has then
pointed the process at it), when ephemeral mode is turned off in the environment, or when Prefect is
imported already (its settings are read then: a test harness or a notebook keeps Prefect's own way).
"""

from __future__ import annotations

import atexit
import os
import re
import socket
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path

from deployments.prefect_server import healthy

# The ephemeral server needs Prefect's settings, none of the hub's (database URL, Shoptet token).
_NOT_FOR_SERVER = re.compile(r"^HUB_|^PREFECT_API_URL$|TOKEN|SECRET|PASSW|CREDENTIAL|DATABASE_URL$", re.I)
_OFF = ("PREFECT_SERVER_EPHEMERAL_ENABLED", "PREFECT_SERVER_ALLOW_EPHEMERAL_MODE")
PORT_IN_USE = 3  # uvicorn's exit code when the port is taken


@dataclass
class Ephemeral:
    proc: subprocess.Popen
    port: int
    started: float

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"


_server: Ephemeral | None = None


def start() -> Ephemeral | None:
    """Start the server in the background (no wait) unless a server is in use; idempotent."""
    global _server
    if _server is not None:
        return _server
    if os.environ.get("PREFECT_API_URL") or any(os.environ.get(v, "").lower() in ("0", "false") for v in _OFF):
        return None
    if "prefect" in sys.modules:  # its settings are read already (a test harness, a notebook): Prefect's own way
        return None
    if configured_api_url():  # `prefect config set` / `prefect cloud login`: the user's server, not a temporary one
        return None
    port = _free_port()
    _server = Ephemeral(_launch(port), port, time.monotonic())
    os.environ["PREFECT_API_URL"] = _server.api_url
    atexit.register(stop)
    return _server


def configured_api_url() -> str | None:
    """A Prefect API URL set in one of Prefect's settings files, read without importing Prefect.

    Prefect reads, besides the environment: ``.env``, ``prefect.toml`` and ``pyproject.toml``'s
    ``[tool.prefect]`` in the working folder, and the active profile of ``profiles.toml``
    (``PREFECT_PROFILES_PATH``, else ``PREFECT_HOME``/``~/.prefect``; ``PREFECT_PROFILE`` or the file's
    ``active``). Setting ``PREFECT_API_URL`` here would override that server, so none is started then.
    """
    cwd = Path.cwd()
    env_file = cwd / ".env"
    if env_file.is_file():
        for line in env_file.read_text(errors="replace").splitlines():
            key, _, value = line.strip().removeprefix("export ").partition("=")
            if key.strip() == "PREFECT_API_URL" and value.strip().strip("\"'"):
                return value.strip().strip("\"'")
    url = _toml(cwd / "prefect.toml").get("api", {}).get("url")
    url = url or _toml(cwd / "pyproject.toml").get("tool", {}).get("prefect", {}).get("api", {}).get("url")
    if url:
        return str(url)
    home = Path(os.environ.get("PREFECT_HOME") or Path.home() / ".prefect").expanduser()
    profiles = _toml(Path(os.environ.get("PREFECT_PROFILES_PATH") or home / "profiles.toml").expanduser())
    active = os.environ.get("PREFECT_PROFILE") or profiles.get("active")
    url = profiles.get("profiles", {}).get(active, {}).get("PREFECT_API_URL") if active else None
    return str(url) if url else None


def _toml(path: Path) -> dict:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError):
        return {}


def running() -> Ephemeral | None:
    """The temporary server this process started, if any."""
    return _server


def wait_ready(console=None, timeout: float | None = None) -> None:  # noqa: ANN001 - rich.console.Console
    """Block until the server started by ``start`` answers, with a spinner saying what it waits for."""
    if _server is None or healthy(_server.api_url, timeout=0.5):
        return
    from rich.console import Console

    console = console or Console(stderr=True)
    timeout = timeout or float(os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS") or 180)
    with console.status(
        "Starting Prefect's temporary server (no `hub serve` running; `hub serve` keeps one up and saves this)…"
    ):
        while not healthy(_server.api_url, timeout=0.5):
            code = _server.proc.poll()
            if code == PORT_IN_USE:  # taken since _free_port; Prefect, imported now, has read the URL: no retry
                raise RuntimeError(f"port {_server.port} of Prefect's temporary server was taken meanwhile: run again")
            if code is not None:
                raise RuntimeError(f"Prefect's temporary server exited with code {code} while starting")
            if time.monotonic() - _server.started > timeout:
                raise RuntimeError(f"Prefect's temporary server did not answer within {timeout:.0f} s")
            time.sleep(0.1)


def stop() -> None:
    global _server
    if _server is None:
        return
    proc, _server = _server.proc, None
    proc.terminate()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _launch(port: int) -> subprocess.Popen:
    spec = find_spec("prefect")  # not imported: that is the point
    app_dir = Path(next(iter(spec.submodule_search_locations))).parent
    env = {k: v for k, v in os.environ.items() if not _NOT_FOR_SERVER.search(k)}
    env.update(PREFECT_UI_ENABLED="0", PREFECT__SERVER_EPHEMERAL="1", PREFECT__SERVER_FINAL="1")
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "--app-dir",
            str(app_dir),
            "--factory",
            "prefect.server.api.server:create_app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "error",
            "--lifespan",
            "on",
        ],  # fmt: skip
        env=env,
        stdin=subprocess.DEVNULL,
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
