"""Alembic migrations, serialized by a PostgreSQL advisory lock so two processes never migrate at once."""

from __future__ import annotations

from pathlib import Path

import psycopg
import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from psycopg import sql

from db.connection import libpq_url, sqlalchemy_url
from db.locks import AdvisoryKey, session_lock

MIGRATIONS = Path(__file__).resolve().parent.parent / "models" / "migrations"
# Any constant works; it only has to be the same in every process of this project. One bigint, not a
# per-schema key: migrations of different schemas of one database are serialized too.
MIGRATION_LOCK_KEY = 0x5B0_7E7
_LOCK = AdvisoryKey.bigint(MIGRATION_LOCK_KEY)


def _config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


def _run(url: str, schema: str, fn) -> None:  # noqa: ANN001
    # A session lock (not xact): it must outlive the migration's own transactions. It is held on a
    # session of its own, next to the one Alembic drives, so it never mixes into that one's transactions.
    with psycopg.connect(libpq_url(url), autocommit=True) as lock_conn, session_lock(lock_conn, _LOCK):
        engine = sa.create_engine(sqlalchemy_url(url), poolclass=sa.pool.NullPool)
        try:
            with engine.connect() as conn:
                raw = conn.connection.driver_connection
                with conn.begin():  # commits the two statements sent past SQLAlchemy
                    raw.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
                    raw.execute(sql.SQL("SET search_path TO {}, public").format(sql.Identifier(schema)))
                cfg = _config()
                cfg.attributes["connection"] = conn
                cfg.attributes["schema"] = schema
                fn(cfg)
                conn.commit()
        finally:
            engine.dispose()


def upgrade(url: str, schema: str = "public", revision: str = "heads") -> None:
    _run(url, schema, lambda cfg: command.upgrade(cfg, revision))


def downgrade(url: str, schema: str = "public", revision: str = "-1") -> None:
    _run(url, schema, lambda cfg: command.downgrade(cfg, revision))


def current_revisions(url: str, schema: str = "public") -> set[str]:
    engine = sa.create_engine(sqlalchemy_url(url), poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"version_table_schema": schema})
            return set(ctx.get_current_heads())
    finally:
        engine.dispose()


def current_revision(url: str, schema: str = "public") -> str | None:
    """The single current revision (None before any migration)."""
    revs = current_revisions(url, schema)
    return ",".join(sorted(revs)) if revs else None


def head_revisions() -> set[str]:
    return set(ScriptDirectory.from_config(_config()).get_heads())


def head_revision() -> str:
    return ",".join(sorted(head_revisions()))


def is_up_to_date(url: str, schema: str = "public") -> bool:
    return current_revisions(url, schema) == head_revisions()
