"""Alembic migrations, serialized by a PostgreSQL advisory lock so two processes never migrate at once.

Alembic and SQLAlchemy are imported only to migrate: every command checks ``is_up_to_date`` first, and
that check reads the version table with psycopg and the scripts' revision lines with ``ast`` (importing
SQLAlchemy and Alembic costs about a second of CPU per command otherwise).
"""

from __future__ import annotations

import ast
import time
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg
from psycopg import sql

from db.advisory import AdvisoryKey, session_lock
from db.connection import libpq_url, sqlalchemy_url
from db.ddl_retry import lock_timeout, retry_on_lock_timeout

if TYPE_CHECKING:
    import sqlalchemy as sa

MIGRATIONS = Path(__file__).resolve().parent.parent / "models" / "migrations"
# Any constant works; it only has to be the same in every process of this project. One bigint, not a
# per-schema key: migrations of different schemas of one database are serialized too.
MIGRATION_LOCK_KEY = 0x5B0_7E7
_LOCK = AdvisoryKey.bigint(MIGRATION_LOCK_KEY)
LOCK_TIMEOUT = "5s"  # each DDL statement's wait for its lock; then the whole upgrade is rolled back and retried
ATTEMPTS = 8


def _config():  # noqa: ANN202 - alembic.config.Config, imported lazily
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


def _run(
    url: str,
    schema: str,
    fn,  # noqa: ANN001
    *,
    lock_timeout: str = LOCK_TIMEOUT,
    attempts: int = ATTEMPTS,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    # A session lock (not xact): it must outlive the migration's own transactions. It is held on a
    # session of its own, next to the one Alembic drives, so it never mixes into that one's transactions.
    import sqlalchemy as sa

    with psycopg.connect(libpq_url(url), autocommit=True) as lock_conn, session_lock(lock_conn, _LOCK):
        engine = sa.create_engine(sqlalchemy_url(url), poolclass=sa.pool.NullPool)
        try:
            retry_on_lock_timeout(
                "migrating", lambda: _migrate_once(engine, schema, fn, lock_timeout), attempts=attempts, sleep=sleep
            )
        finally:
            engine.dispose()


def _migrate_once(engine: sa.Engine, schema: str, fn, timeout: str) -> None:  # noqa: ANN001
    """One try: every pending migration in one transaction under ``timeout`` (rolled back whole if it expires)."""
    import sqlalchemy as sa

    try:
        with engine.connect() as conn:
            raw = conn.connection.driver_connection
            with conn.begin():  # commits the two statements sent past SQLAlchemy
                raw.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
                raw.execute(sql.SQL("SET search_path TO {}, public").format(sql.Identifier(schema)))
            cfg = _config()
            cfg.attributes["connection"] = conn
            cfg.attributes["schema"] = schema
            # An ALTER waiting for its lock (behind a nightly pg_dump's ACCESS SHARE, say) would queue every
            # query on that table behind it: wait at most ``timeout``, then roll back and try again later.
            with conn.begin(), lock_timeout(raw, timeout):
                fn(cfg)
    except sa.exc.DBAPIError as exc:
        if isinstance(exc.orig, psycopg.errors.LockNotAvailable):
            raise exc.orig from None
        raise


def upgrade(url: str, schema: str = "public", revision: str = "heads", **retry) -> None:  # noqa: ANN003
    """Pending migrations up to ``revision``; ``retry``: ``lock_timeout``, ``attempts``, ``sleep`` (see ``_run``)."""
    from alembic import command

    _run(url, schema, lambda cfg: command.upgrade(cfg, revision), **retry)


def downgrade(url: str, schema: str = "public", revision: str = "-1", **retry) -> None:  # noqa: ANN003
    from alembic import command

    _run(url, schema, lambda cfg: command.downgrade(cfg, revision), **retry)


def current_revisions(url: str, schema: str = "public") -> set[str]:
    """The revisions in the schema's ``alembic_version`` table (empty before any migration)."""
    table = sql.Identifier(schema, "alembic_version")
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        if conn.execute("SELECT to_regclass(%s)", (table.as_string(conn),)).fetchone()[0] is None:
            return set()
        return {r[0] for r in conn.execute(sql.SQL("SELECT version_num FROM {}").format(table))}


def current_revision(url: str, schema: str = "public") -> str | None:
    """The single current revision (None before any migration)."""
    revs = current_revisions(url, schema)
    return ",".join(sorted(revs)) if revs else None


@lru_cache(maxsize=1)
def head_revisions() -> frozenset[str]:
    """The scripts' heads: revisions no other script names as its ``down_revision``.

    Read from the module-level ``revision``/``down_revision`` assignments of ``versions/*.py`` (as
    Alembic's own templates write them); ``tests/integration/test_migrations.py`` checks it against
    Alembic's ``ScriptDirectory.get_heads``.
    """
    revisions, downs = set(), set()
    for path in sorted((MIGRATIONS / "versions").glob("*.py")):
        values = _assignments(path, ("revision", "down_revision"))
        if "revision" not in values:
            continue
        revisions.add(values["revision"])
        down = values.get("down_revision")
        downs.update(down if isinstance(down, tuple | list) else [down] if down else [])
    return frozenset(revisions - downs)


def _assignments(path: Path, names: tuple[str, ...]) -> dict:
    out = {}
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.AnnAssign):
            target = node.target
        elif isinstance(node, ast.Assign):
            target = node.targets[0]
        else:
            continue
        if isinstance(target, ast.Name) and target.id in names and node.value is not None:
            out[target.id] = ast.literal_eval(node.value)
    return out


def head_revision() -> str:
    return ",".join(sorted(head_revisions()))


def is_up_to_date(url: str, schema: str = "public") -> bool:
    return current_revisions(url, schema) == head_revisions()
