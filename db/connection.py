"""Connections and URLs. Every function in db/ takes a psycopg connection or a URL from here."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import quote, unquote, urlencode

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

# libpq keywords whose value is a secret (``sslpassword`` unlocks the client key).
_SECRET_KEYS = frozenset({"password", "sslpassword"})
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
# One ``keyword = value`` of a libpq keyword/value string: a value is single-quoted (backslash escapes
# inside) or runs to the next blank (a backslash escapes the next character); as libpq parses it.
_KEYWORD_VALUE = re.compile(r"""(?P<key>[A-Za-z_]\w*)\s*=\s*(?P<value>'(?:[^'\\]|\\.)*'?|(?:[^\s'\\]|\\.)*)""", re.S)


def mask_url(url: str) -> str:
    """The URL or keyword/value DSN with every password replaced by ``***`` (for printing and logs).

    Masks the URL's ``user:password@``, a ``?password=`` (or ``sslpassword=``) query parameter, and the
    same keywords of a libpq string (``host=db password=s3cret``); everything else is kept as written, so
    socket URLs (``postgresql:///db?host=/run``) stay usable. On a malformed URL it masks too much rather
    than print part of a password.
    """
    if not url:
        return url
    if _SCHEME.match(url):
        return _mask_uri(url)
    return _mask_keywords(url)


def _mask_keywords(dsn: str) -> str:
    def one(m: re.Match[str]) -> str:
        key, value = m["key"], m["value"]
        if key.lower() in _SECRET_KEYS:
            return f"{key}=***"
        if key.lower() == "dbname" and ("=" in value or _SCHEME.match(value.strip("'"))):
            # libpq expands a dbname that is itself a connection string (URL or keywords).
            quoted = value.startswith("'")
            inner = mask_url(value[1:-1] if quoted and value.endswith("'") else value.strip("'"))
            return f"{key}='{inner}'" if quoted else f"{key}={inner}"
        return m[0]

    return _KEYWORD_VALUE.sub(one, dsn)


def _mask_uri(url: str) -> str:
    scheme, rest = url.split("://", 1)
    at = _userinfo_end(rest)
    prefix = ""
    if at is not None:
        userinfo, rest = rest[:at], rest[at + 1 :]
        user, colon, password = userinfo.partition(":")
        prefix = f"{user}:***@" if colon and password else f"{user}@"
    head, q, query = rest.partition("?")
    if q:
        query = "&".join(_mask_param(p) for p in query.split("&"))
    return f"{scheme}://{prefix}{head}{q}{query}"


def _mask_param(param: str) -> str:
    key, eq, _ = param.partition("=")
    return f"{key}=***" if eq and unquote(key).lower() in _SECRET_KEYS else param


def _userinfo_end(rest: str) -> int | None:
    """Where ``user:password@`` ends in a URL without its scheme, or None when there is none.

    The last ``@`` that is not inside a query value: a password holding an unescaped ``@``, ``/``, ``?``
    or ``#`` is split elsewhere by libpq, SQLAlchemy and urllib, so masking up to there never prints a
    piece of it.
    """
    query_at = rest.find("?")
    end = None
    for i, ch in enumerate(rest):
        if ch != "@":
            continue
        if 0 <= query_at < i and "=" in rest[query_at + 1 : i].rsplit("&", 1)[-1]:
            continue  # e.g. ?application_name=a@b
        end = i
    if end is None and "@" in rest:
        # Every "@" sits in a query value, unless the "?" belongs to the password: a host:port whose
        # port is not a number (``u:pa?x=y@h``) is a user:password.
        authority = re.split(r"[/?#]", rest, maxsplit=1)[0]
        port = authority.rpartition("]")[2].rpartition(":")
        if port[1] and not port[2].isdigit():
            end = rest.rfind("@")
    return end


def as_url(dsn: str) -> str:
    """A libpq keyword/value string (``host=db dbname=shop``) as the same connection in URL form.

    The helpers below edit URLs, so ``HUB_DATABASE_URL`` may be written either way. Every keyword but
    ``dbname`` goes to the query string, which libpq and SQLAlchemy's psycopg dialect both read.
    """
    if not dsn or _SCHEME.match(dsn):
        return dsn
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        # libpq's message quotes the string it could not parse, password included.
        raise ValueError(
            "the database URL is neither a PostgreSQL URL nor a key=value connection string (libpq could not parse it)"
        ) from None
    dbname = str(params.pop("dbname", "") or "")
    user, password = params.pop("user", None), params.pop("password", None)
    # The password in user:password@, where SQLAlchemy's repr and hide_password find it (not in the query).
    userinfo = "" if user is None and password is None else quote(str(user or ""), safe="")
    if password is not None:
        userinfo += ":" + quote(str(password), safe="")
    query = urlencode({k: str(v) for k, v in params.items()}, quote_via=quote)
    return f"postgresql://{userinfo + '@' if userinfo else ''}/{quote(dbname, safe='')}" + (
        f"?{query}" if query else ""
    )


# A database name the hub derives a connection for: an unquoted SQL identifier (no "?", "=", blank or
# "/" that libpq or a URL parser could read as another parameter), at most 63 bytes.
_PLAIN_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}").fullmatch


class BadDatabaseName(ValueError):
    """A database name that is not a plain identifier."""


def plain_database_name(name: str) -> str:
    """``name`` if it is a plain identifier (letters, digits, ``_``; not starting with a digit; ≤ 63), else raise."""
    if not isinstance(name, str) or not _PLAIN_NAME(name):
        raise BadDatabaseName(
            f"database name {str(name)[:80]!r} is not a plain identifier: use letters, digits and _ only "
            "(not starting with a digit, at most 63 characters)"
        )
    return name


def database_conninfo(url: str, dbname: str) -> str:
    """libpq's conninfo for database ``dbname`` on the server of ``url`` (keyword/value form).

    libpq parses ``url`` and psycopg's ``make_conninfo`` replaces only the ``dbname`` keyword, quoting
    it; host, port, user, password and TLS settings stay exactly as libpq read them.
    """
    return make_conninfo(libpq_url(url), dbname=plain_database_name(dbname))


def with_database(url: str, dbname: str) -> str:
    """:func:`database_conninfo` as a URL (for what needs one: SQLAlchemy, ``HUB_DATABASE_URL``), built by quoting."""
    return as_url(database_conninfo(url, dbname))


def sqlalchemy_url(url: str) -> str:
    """psycopg 3 dialect for SQLAlchemy/Alembic."""
    return re.sub(r"^postgres(ql)?(\+\w+)?://", "postgresql+psycopg://", as_url(url))


def libpq_url(url: str) -> str:
    return re.sub(r"^postgres(ql)?(\+\w+)?://", "postgresql://", as_url(url))


def connect(url: str, schema: str = "public", *, autocommit: bool = False, **kw) -> psycopg.Connection:
    """A connection whose ``search_path`` is the hub's schema, so SQL can name tables unqualified."""
    conn = psycopg.connect(libpq_url(url), autocommit=autocommit, **kw)
    # Pinned always, also for public: the default path starts with "$user", so with a role whose name
    # is also a schema, unqualified DDL would land there. public stays on the path for extensions.
    path = [schema] if schema == "public" else [schema, "public"]
    with conn.cursor() as cur:
        cur.execute(sql.SQL("SET search_path TO {}").format(sql.SQL(", ").join(map(sql.Identifier, path))))
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
