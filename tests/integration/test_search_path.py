"""connect() pins search_path for every schema, public too (review L15)."""

from __future__ import annotations

import uuid

import psycopg
from psycopg import sql

from db.connection import connect, libpq_url


def test_public_is_pinned_so_a_schema_named_like_the_role_never_catches_ddl(db_url):
    with psycopg.connect(libpq_url(db_url), autocommit=True) as admin:
        role = admin.execute("SELECT current_user").fetchone()[0]
        admin.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(role)))
    table = f"probe_{uuid.uuid4().hex[:8]}"
    with connect(db_url, "public") as c:
        assert c.execute("SHOW search_path").fetchone()[0] == "public"
        c.execute(sql.SQL("CREATE TABLE {} (x int)").format(sql.Identifier(table)))
        c.commit()
        where = c.execute("SELECT relnamespace::regnamespace::text FROM pg_class WHERE relname = %s", (table,))
        assert where.fetchone()[0] == "public"
    with connect(db_url, "hub_other", autocommit=True) as c:
        assert c.execute("SHOW search_path").fetchone()[0] == "hub_other, public"
