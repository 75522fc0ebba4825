"""Shared fixtures: one PostgreSQL server per session, a fresh database per test.

The embedded server (PostgreSQL 18) by default; ``HUB_TEST_DATABASE_URL`` (any database URL on the
server) to test against another server, e.g. the machine's PostgreSQL 15.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from pathlib import Path

# Before Prefect is imported anywhere: its SQLite telemetry writes clash with the test harness.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

import psycopg
import pytest
from prefect.testing.utilities import prefect_test_harness
from psycopg import sql

from db.connection import libpq_url, with_database
from db.migrate import upgrade

SCHEMA = "public"


def _server_url() -> str:
    url = os.environ.get("HUB_TEST_DATABASE_URL")
    if url:
        return url
    from db.embedded import embedded_server_url

    return embedded_server_url(server_home())


def server_home() -> Path:
    """The test server's HUB_HOME: one per user (and per checkout when ``HUB_TEST_HOME`` says so).

    Under /tmp, as root the wheel opens r/x on the data folder's parents, harmless here. Per user, as the
    first user to create a shared folder would own it (and the other users' test runs would fail).
    """
    if os.environ.get("HUB_TEST_HOME"):
        return Path(os.environ["HUB_TEST_HOME"])
    return Path(tempfile.gettempdir()) / f"shoptet-hub-tests-{os.geteuid()}"


@pytest.fixture(scope="session")
def pg_server_url() -> str:
    return _server_url()


def _admin(server_url: str) -> psycopg.Connection:
    return psycopg.connect(libpq_url(with_database(server_url, "postgres")), autocommit=True)


@pytest.fixture(scope="session")
def template_db(pg_server_url: str):
    """A migrated database that every test's database is copied from (CREATE DATABASE … TEMPLATE)."""
    name = f"hub_tpl_{os.getpid()}"
    with _admin(pg_server_url) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    upgrade(with_database(pg_server_url, name), SCHEMA)
    yield name
    with _admin(pg_server_url) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def make_db(pg_server_url: str, template_db: str):
    """A factory of fresh, migrated databases, all dropped after the test."""
    names: list[str] = []

    def make() -> str:
        name = f"hub_t_{uuid.uuid4().hex[:12]}"
        with _admin(pg_server_url) as conn:
            conn.execute(
                sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name), sql.Identifier(template_db))
            )
        names.append(name)
        return with_database(pg_server_url, name)

    yield make
    from db.settings.registry import close_settings_services

    close_settings_services()  # their listeners would keep reconnecting to the dropped databases
    with _admin(pg_server_url) as conn:
        for name in names:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def db_url(make_db) -> str:
    """A fresh, migrated database for one test."""
    return make_db()


@pytest.fixture
def empty_db_url(pg_server_url: str):
    """A fresh database without any migration applied."""
    name = f"hub_e_{uuid.uuid4().hex[:12]}"
    with _admin(pg_server_url) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    yield with_database(pg_server_url, name)
    with _admin(pg_server_url) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def conn(db_url: str):
    with psycopg.connect(libpq_url(db_url), autocommit=True) as c:
        yield c


@pytest.fixture
def no_retry_waits(monkeypatch):
    """Task retries without real waiting: the retry delays of every task in flows/ are 0 for the test."""
    import importlib
    import pkgutil

    from prefect import Task

    import flows

    for info in pkgutil.iter_modules(flows.__path__, "flows."):
        for obj in vars(importlib.import_module(info.name)).values():
            if isinstance(obj, Task) and obj.retry_delay_seconds:
                monkeypatch.setattr(obj, "retry_delay_seconds", 0)


@pytest.fixture(scope="session")
def shared_prefect_server():
    """One temporary Prefect server for the whole session: starting one per module cost minutes per run.

    Modules share it safely: lock limits are named per hub instance (per test database), and flow runs
    are told apart by the hub's own run records. A module that reads the server's flow runs as a whole
    (`hub status`) starts its own with ``isolated_prefect_harness``.
    """
    with prefect_test_harness(server_startup_timeout=60):
        yield


@pytest.fixture(scope="module")
def prefect_harness(shared_prefect_server):
    """The Prefect server for the module's flow runs (limits must be created inside it)."""
    yield


@pytest.fixture(scope="module")
def isolated_prefect_harness():
    """A Prefect server of the module's own, for tests that read every flow run on the server."""
    with prefect_test_harness(server_startup_timeout=60):
        yield
