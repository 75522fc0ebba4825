"""PostgreSQL restarted during an apply and between two flows: nothing half-applied, the next run completes.

These restart the test server itself (the embedded one, or the one ``HUB_TEST_DATABASE_URL`` names).
"""

from __future__ import annotations

import os
from pathlib import Path

import psycopg
import pytest

from db.connection import connect, libpq_url, with_database
from db.loader import ApplyOptions, apply_snapshot_file
from db.runs import start_run
from flows.entities import Entity
from flows.snapshot import import_file
from tests.factories import customer, order, write_jsonl
from tests.faults.pg_restart import restart_server
from tests.integration.conftest import hub_env  # noqa: F401 - fixtures

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def restart(pg_server_url):
    if os.geteuid() != 0 and not os.environ.get("HUB_TEST_ALLOW_RESTART"):
        pytest.skip("restarting the test server needs root (or its owner with HUB_TEST_ALLOW_RESTART=1)")
    return lambda: restart_server(libpq_url(with_database(pg_server_url, "postgres")))


def stored(conn: psycopg.Connection, table: str, key: str) -> set[str]:
    return {
        r[0]
        for r in conn.execute(
            psycopg.sql.SQL("SELECT {} FROM {}").format(psycopg.sql.Identifier(key), psycopg.sql.Identifier(table))
        )
    }


def test_restart_during_an_apply_leaves_nothing_and_a_rerun_completes(db_url, tmp_path, restart):
    orders = [order(str(i)) for i in range(3000)]
    f = write_jsonl(tmp_path / "o.gz", orders)
    with connect(db_url) as c:
        run_id = start_run(c, "orders", source="file", full=False)
    restarted = []

    def restart_once(lines: int, done: int, total: int) -> None:
        if lines > 500 and not restarted:
            restarted.append(lines)
            restart()

    with pytest.raises(psycopg.OperationalError):
        apply_snapshot_file(
            db_url, "orders", f, run_id=run_id, options=ApplyOptions(chunk_bytes=64 << 10), progress=restart_once
        )
    with psycopg.connect(libpq_url(db_url), autocommit=True) as conn:
        assert stored(conn, "orders", "code") == set()
        assert conn.execute("SELECT count(*) FROM order_items").fetchone()[0] == 0
    r = apply_snapshot_file(db_url, "orders", f, run_id=run_id)
    with psycopg.connect(libpq_url(db_url), autocommit=True) as conn:
        assert stored(conn, "orders", "code") == {o["code"] for o in orders}
        assert conn.execute("SELECT count(*) FROM order_items").fetchone()[0] == 3 * len(orders)
    assert r.inserted == len(orders)


def test_restart_between_two_flows_of_a_run(prefect_harness, hub_env, tmp_path, restart):  # noqa: F811
    customers = [customer(f"c-{i}") for i in range(50)]
    orders = [order(str(i)) for i in range(50)]
    c_file = write_jsonl(tmp_path / "c.gz", customers)
    o_file = write_jsonl(tmp_path / "o.gz", orders)
    assert import_file(Entity.customers, Path(c_file))["inserted"] == 50
    restart()
    assert import_file(Entity.orders, Path(o_file))["inserted"] == 50
    with psycopg.connect(libpq_url(hub_env), autocommit=True) as conn:
        assert stored(conn, "customers", "guid") == {c["guid"] for c in customers}
        assert stored(conn, "orders", "code") == {o["code"] for o in orders}
        assert conn.execute("SELECT count(*) FROM order_items").fetchone()[0] == 150
        # every run of the two flows ended (none left 'running' by the restart)
        assert conn.execute("SELECT array_agg(status ORDER BY id) FROM snapshot_runs").fetchone()[0] == [
            "succeeded",
            "succeeded",
        ]
