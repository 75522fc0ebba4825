"""What the benchmark scripts share: which server, and a fresh migrated database on it."""

from __future__ import annotations

import resource
import tempfile
from pathlib import Path

import psycopg
from psycopg import sql

from db.connection import libpq_url, with_database
from db.migrate import upgrade


def server_url(arg: str | None) -> str:
    """The given server URL, or the benchmarks' own embedded PostgreSQL (never the tests' or a shop's)."""
    if arg:
        return arg
    from db.embedded import embedded_server_url

    return embedded_server_url(Path(tempfile.gettempdir()) / "shoptet-hub-bench-pg")


def fresh_db(server: str, name: str) -> str:
    with psycopg.connect(libpq_url(with_database(server, "postgres")), autocommit=True) as c:
        c.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        c.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = with_database(server, name)
    upgrade(url)
    return url


def children_cpu() -> float:
    """User + system CPU seconds of this process's reaped children so far (subtract two readings)."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime
