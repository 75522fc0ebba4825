"""A first import builds secondary indexes after loading; anything else leaves them alone."""

from __future__ import annotations

import threading

import psycopg
import pytest

from db.connection import connect
from db.indexes import deferred as deferred_indexes
from db.loader import TooManyRejectsError
from tests.factories import order, write_jsonl
from tests.integration.test_loader import apply

pytestmark = pytest.mark.integration


def index_defs(conn: psycopg.Connection, table: str) -> dict[str, str]:
    rows = conn.execute(
        "SELECT indexrelid::regclass::text, pg_get_indexdef(indexrelid) FROM pg_index WHERE indrelid = %s::regclass "
        "AND indisvalid ORDER BY 1",
        (table,),
    )
    return dict(rows.fetchall())


def orders_file(tmp_path, n=40, bad=0):
    return write_jsonl(tmp_path / "o.gz", [order(str(i)) for i in range(n)] + [b"{broken"] * bad)


def test_first_import_rebuilds_the_same_indexes(db_url, conn, tmp_path):
    before = index_defs(conn, "orders")
    assert len(before) >= 3  # the primary key and secondary indexes of models/tables.py
    dropped = []
    real_drop = deferred_indexes.drop_if_empty

    def spy(*a):
        dropped.extend(real_drop(*a))
        return dropped

    deferred_indexes.drop_if_empty, saved = spy, real_drop
    try:
        r = apply(db_url, "orders", orders_file(tmp_path), defer_indexes=True)
    finally:
        deferred_indexes.drop_if_empty = saved
    assert r.inserted == 40
    assert {ix.name for ix in dropped} == set(before) - {"orders_pkey"}
    assert index_defs(conn, "orders") == before
    # the rebuilt indexes are used like the old ones
    conn.execute("SET enable_seqscan = off")
    plan = "\n".join(r[0] for r in conn.execute("EXPLAIN SELECT * FROM orders WHERE changed_at > now()"))
    assert "ix_orders_changed_at" in plan


def test_rollback_keeps_the_indexes(db_url, conn, tmp_path):
    before = index_defs(conn, "orders")
    with pytest.raises(TooManyRejectsError):
        apply(db_url, "orders", orders_file(tmp_path, n=10, bad=5), defer_indexes=True)
    assert index_defs(conn, "orders") == before
    assert conn.execute("SELECT count(*) FROM orders").fetchone()[0] == 0


def test_a_table_with_rows_keeps_its_indexes(db_url, tmp_path):
    apply(db_url, "orders", write_jsonl(tmp_path / "one.gz", [order("first")]))
    with connect(db_url) as c, c.transaction():
        assert deferred_indexes.drop_if_empty(c, "public", "orders") == []
        assert len(index_defs(c, "orders")) >= 3


def test_a_table_in_use_is_loaded_with_its_indexes(db_url, monkeypatch):
    monkeypatch.setattr(deferred_indexes, "LOCK_TIMEOUT", "200ms")
    holding, release = threading.Event(), threading.Event()

    def reader():
        with connect(db_url) as c, c.transaction():
            c.execute("SELECT count(*) FROM orders")  # ACCESS SHARE until the transaction ends
            holding.set()
            release.wait(10)

    t = threading.Thread(target=reader)
    t.start()
    try:
        assert holding.wait(10)
        with connect(db_url) as c, c.transaction():
            assert deferred_indexes.drop_if_empty(c, "public", "orders") == []
            assert c.execute("SHOW lock_timeout").fetchone()[0] != "200ms"  # the caller's setting is back
            assert len(index_defs(c, "orders")) >= 3
    finally:
        release.set()
        t.join()
