"""Restore targets: a database name is never spliced into a URL, and the hub's own database (as the
server names it) is never replaced; Prefect's and another hub's only with a second flag (review H2, M9)."""

from __future__ import annotations

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from typer.testing import CliRunner

from db import pg_tools
from db.backups import dump, restore, verify
from db.backups.target import TargetRefused, check_target
from db.connection import BadDatabaseName, database_conninfo, libpq_url, with_database
from deployments.cli import app
from flows import runtime
from flows.config import get_config

PROBE = "x?host=evil.example&sslmode=disable"


@pytest.fixture
def backup(db_url, tmp_path):
    path, _ = dump.take_backup(db_url, "public", tmp_path / "backups")
    verify.verify_backup(path)  # restores take only verified backups
    return path


@pytest.fixture
def connects(monkeypatch):
    """Every conninfo psycopg.connect is called with, as libpq reads it."""
    seen: list[dict] = []
    real = psycopg.connect

    def spy(conninfo="", *a, **kw):
        seen.append(conninfo_to_dict(conninfo))
        return real(conninfo, *a, **kw)

    monkeypatch.setattr(psycopg, "connect", spy)
    return seen


def own_name(db_url: str) -> str:
    return conninfo_to_dict(libpq_url(db_url))["dbname"]


def test_the_h2_probe_is_refused_before_anything_connects(db_url, backup, connects, monkeypatch):
    ran: list = []
    monkeypatch.setattr(pg_tools, "run", lambda *a, **k: ran.append(a))
    with pytest.raises(TargetRefused, match="not a plain identifier"):
        restore.restore_into(db_url, backup, PROBE, force=True)
    assert connects == [] and ran == []
    # The README's URL form (no query string) is where the splice used to produce a new host.
    for url in ("postgresql://hub:s3cret@db.example:5432/shop", db_url):
        with pytest.raises(BadDatabaseName):
            database_conninfo(url, PROBE)
        with pytest.raises(BadDatabaseName):
            with_database(url, PROBE)


def test_derived_conninfo_changes_only_the_database():
    url = "postgresql://hub:s%40cret@db.example:5432/shop?sslmode=require&application_name=a%20b"
    want = {**conninfo_to_dict(url), "dbname": "other"}
    assert conninfo_to_dict(database_conninfo(url, "other")) == want
    assert conninfo_to_dict(libpq_url(with_database(url, "other"))) == want
    dsn = "host=/run/pg port=5433 user=hub password='a b' dbname=shop"
    assert conninfo_to_dict(database_conninfo(dsn, "other")) == {**conninfo_to_dict(dsn), "dbname": "other"}


def test_cli_refuses_the_probe_in_one_line(db_url, backup, monkeypatch, connects, prefect_harness):
    monkeypatch.setenv("HUB_DATABASE_URL", db_url)
    monkeypatch.setenv("HUB_BACKUP_DIR", str(backup.parent))
    get_config.cache_clear()
    with runtime.override(database_url=db_url):
        res = CliRunner().invoke(app, ["restore", str(backup), "--target-db", PROBE, "--force"])
    get_config.cache_clear()
    assert res.exit_code == 1 and "not a plain identifier" in " ".join(res.output.split())
    assert not any(c.get("host") == "evil.example" for c in connects)


def _without_dbname(db_url: str) -> str:
    params = conninfo_to_dict(libpq_url(db_url))
    params.pop("dbname")
    return make_conninfo(**params)


@pytest.mark.parametrize("form", ["keyword DSN", "PGDATABASE", "URL without dbname"])
def test_the_hubs_own_database_is_refused_however_it_is_named(db_url, backup, monkeypatch, form):
    own = own_name(db_url)
    if form == "keyword DSN":
        url = make_conninfo(libpq_url(db_url))
    elif form == "PGDATABASE":
        monkeypatch.setenv("PGDATABASE", own)
        url = _without_dbname(db_url)
    else:  # libpq then uses the user name: that database is the one the hub would be using
        url = _without_dbname(db_url)
        with psycopg.connect(libpq_url(url)) as c:
            own = c.execute("SELECT current_database()").fetchone()[0]
    with pytest.raises(TargetRefused, match="the database this hub is using"):
        restore.restore_into(url, backup, own, force=True, replace_hub_database=True)
    with psycopg.connect(libpq_url(db_url)) as c:  # still there, tables and all
        assert c.execute("SELECT count(*) FROM hub_instance").fetchone()[0] == 1


def test_another_hubs_database_needs_the_second_flag(db_url, make_db, backup):
    other = own_name(make_db())  # a migrated database: it holds hub_instance
    with pytest.raises(TargetRefused, match="holds a hub's tables.*--replace-hub-database"):
        restore.restore_into(db_url, backup, other, force=True)
    out = restore.restore_into(db_url, backup, other, force=True, replace_hub_database=True)
    assert out["target"] == other and out["replaced_tables"] > 0


def test_prefects_database_needs_the_second_flag(db_url):
    admin_info = database_conninfo(db_url, "postgres")
    with psycopg.connect(admin_info, autocommit=True) as c:
        created = c.execute("SELECT 1 FROM pg_database WHERE datname = 'prefect'").fetchone() is None
        if created:
            c.execute("CREATE DATABASE prefect")
    try:
        with pytest.raises(TargetRefused, match="Prefect server's database"):
            check_target(db_url, "prefect")
        check_target(db_url, "prefect", replace_hub_database=True)
    finally:
        if created:
            with psycopg.connect(admin_info, autocommit=True) as c:
                c.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier("prefect")))
