"""Connections and URLs. Every function in db/ takes a psycopg connection or a URL from here."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import parse_qsl, urlsplit

import psycopg
from psycopg import sql


def mask_url(url: str) -> str:
    """The URL with any password replaced by ``***`` (for printing and logs)."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        if ":" in userinfo:
            user, password = userinfo.split(":", 1)
            userinfo = f"{user}:***" if password else user
        netloc = f"{userinfo}@{host}"
    query = "&".join(
        f"{k}=***" if k.lower() == "password" else f"{k}={v}" for k, v in parse_qsl(parts.query)
    )
    # Built by hand: urlunsplit drops the "//" of an empty host (socket URLs like postgresql:///db).
    return f"{parts.scheme}://{netloc}{parts.path}" + (f"?{query}" if query else "")


def with_database(url: str, dbname: str) -> str:
    """The same server URL pointing at another database."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}/{dbname}" + (f"?{parts.query}" if parts.query else "")


def database_name(url: str) -> str:
    return urlsplit(url).path.lstrip("/") or "postgres"


def sqlalchemy_url(url: str) -> str:
    """psycopg 3 dialect for SQLAlchemy/Alembic."""
    return re.sub(r"^postgres(ql)?(\+\w+)?://", "postgresql+psycopg://", url)


def libpq_url(url: str) -> str:
    return re.sub(r"^postgres(ql)?(\+\w+)?://", "postgresql://", url)


def connect(url: str, schema: str = "public", *, autocommit: bool = False, **kw) -> psycopg.Connection:
    """A connection whose ``search_path`` is the hub's schema, so SQL can name tables unqualified."""
    conn = psycopg.connect(libpq_url(url), autocommit=autocommit, **kw)
    if schema != "public":
        # public stays on the path for extensions; the hub's schema wins name lookups.
        with conn.cursor() as cur:
            cur.execute(sql.SQL("SET search_path TO {}, public").format(sql.Identifier(schema)))
        if not autocommit:
            conn.commit()
    return conn


@contextmanager
def connection(url: str, schema: str = "public", *, autocommit: bool = False) -> Iterator[psycopg.Connection]:
    conn = connect(url, schema, autocommit=autocommit)
    try:
        yield conn
    finally:
        conn.close()


def ensure_database(server_url: str, dbname: str) -> str:
    """Create ``dbname`` on the server if missing; return its URL."""
    with psycopg.connect(libpq_url(server_url), autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,)).fetchone()
        if not exists:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
    return with_database(server_url, dbname)
