"""Which database a restore may replace, decided by asking the server, not by reading URLs.

A restore drops its target ``WITH (FORCE)``. Never the hub's own database: the one ``url`` really
connects to, whatever supplied the name (the URL, a keyword DSN, ``PGDATABASE``, libpq's default of the
user name), so it is asked for with ``current_database()`` and the cluster's system identifier. Never,
unless a second explicit flag says so, Prefect's database (``hub serve`` keeps it on the same server)
or any database holding a ``hub_instance`` table (another hub, or an earlier restore). The name must be
a plain identifier before anything connects with it.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg

from db.backups.manifest import BackupError
from db.connection import BadDatabaseName, database_conninfo, libpq_url, plain_database_name

PREFECT_DATABASE = "prefect"
_IDENTITY = "SELECT current_database(), (SELECT system_identifier FROM pg_control_system())::text"
_HOLDS_HUB = "SELECT EXISTS (SELECT FROM pg_class WHERE relname = 'hub_instance' AND relkind IN ('r', 'p'))"


class TargetRefused(BackupError):
    """The restore target is not a database the hub may replace."""


@dataclass(frozen=True)
class Identity:
    database: str
    system_identifier: str


def identity(conn: psycopg.Connection) -> Identity:
    """Which database of which cluster ``conn`` is connected to, as the server says."""
    database, system_id = conn.execute(_IDENTITY).fetchone()
    return Identity(database, system_id)


def check_target(url: str, target: str, *, force: bool = True, replace_hub_database: bool = False) -> None:
    """Raise :class:`TargetRefused` unless ``target`` (on the server of ``url``) may be replaced.

    ``url`` is the hub's own database. Nothing connects to ``target`` before its name is checked.
    Without ``force`` a target holding tables is refused anyway (by the restore), with that message.
    """
    try:
        plain_database_name(target)
    except BadDatabaseName as exc:
        raise TargetRefused(f"refusing to restore: {exc}") from None
    with psycopg.connect(libpq_url(url), autocommit=True) as own_conn:
        own = identity(own_conn)
    if own.database == target:
        raise TargetRefused(
            f"refusing to restore over {target}, the database this hub is using: restore into another "
            "database, check it, then point HUB_DATABASE_URL at it"
        )
    with psycopg.connect(database_conninfo(url, "postgres"), autocommit=True) as admin:
        exists = admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (target,)).fetchone()
    if exists is None:
        return
    with psycopg.connect(database_conninfo(url, target), autocommit=True) as c:
        theirs, holds_hub = identity(c), c.execute(_HOLDS_HUB).fetchone()[0]
    if theirs == own:  # a name the server maps onto the hub's own database after all
        raise TargetRefused(f"refusing to restore over {target}: the server says it is the database this hub is using")
    if replace_hub_database or not force:
        return
    if target == PREFECT_DATABASE:
        raise TargetRefused(
            f"refusing to restore over {target}: it is the Prefect server's database (flow runs, deployments); "
            "pass --replace-hub-database as well as --force if that is really meant"
        )
    if holds_hub:
        raise TargetRefused(
            f"refusing to restore over {target}: it holds a hub's tables (hub_instance: another hub, or an "
            "earlier restore); pass --replace-hub-database as well as --force to replace it"
        )
