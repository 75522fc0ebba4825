"""Declared indexes built CONCURRENTLY while writers write; INVALID ones repaired; idempotent; dry runs inert."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from db.connection import libpq_url
from db.indexes import ensure as indexes
from db.partitions.rollover import Quarter, ensure_partitions

pytestmark = pytest.mark.integration

ONLINE = {
    "ix_orders_customer_history",
    "ix_orders_content_hash",
    "ix_order_items_code",
    "ix_customers_email_normalized",
    "ix_product_variants_ean",
    "ix_customer_metrics_segment_recency",
}


def index_state(conn: psycopg.Connection) -> dict[str, bool]:
    """Every index of the schema and whether it is valid."""
    rows = conn.execute(
        """SELECT c.relname, i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
            JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public'"""
    )
    return dict(rows.fetchall())


def run(conn: psycopg.Connection, **kw) -> indexes.Report:
    return indexes.ensure_indexes(conn, "public", sleep=lambda s: None, **kw)


def seed_orders(conn: psycopg.Connection, n: int) -> None:
    conn.execute(
        """INSERT INTO orders (code, created_at, email, content_hash)
           SELECT 'seed' || g, now() - g * interval '1 minute', 'c' || (g %% 5000) || '@x.cz', 'h'
             FROM generate_series(1, %s) g""",
        (n,),
    )


def test_online_indexes_are_declared_and_not_created_by_migrations(conn):
    declared = {d.name for d in indexes.declared_indexes()}
    assert ONLINE <= declared
    assert not ONLINE & set(index_state(conn))  # a fresh migrated database: the flow builds them


def test_missing_index_is_built_while_a_writer_keeps_writing(db_url, conn):
    seed_orders(conn, 100_000)
    stop = threading.Event()
    durations: list[float] = []
    errors: list[BaseException] = []

    def writer() -> None:
        with psycopg.connect(libpq_url(db_url), autocommit=True) as w:
            i = 0
            while not stop.is_set():
                i += 1
                for stmt, args in (
                    (
                        "INSERT INTO orders (code, created_at, email, content_hash) VALUES (%s, now(), %s, 'h')",
                        (f"w{i}", f"w{i}@x.cz"),
                    ),
                    ("UPDATE orders SET email = %s, changed_at = now() WHERE code = %s", (f"u{i}@x.cz", f"seed{i}")),
                ):
                    t0 = time.monotonic()
                    try:
                        w.execute(stmt, args)
                    except psycopg.Error as exc:
                        errors.append(exc)
                    durations.append(time.monotonic() - t0)

    t = threading.Thread(target=writer)
    t.start()
    try:
        time.sleep(0.2)
        report = run(conn)
        time.sleep(0.2)
    finally:
        stop.set()
        t.join(30)
    built = {a["index"] for a in report.actions if a["action"] == "built"}
    assert {"ix_orders_customer_history", "ix_customers_email_normalized", "ix_product_variants_ean"} <= built
    assert not report.failed
    state = index_state(conn)
    assert all(state[name] for name in ONLINE)
    assert errors == []
    assert len(durations) > 50  # the writer really wrote during the build
    assert max(durations) < 1.0, f"slowest writer statement {max(durations):.3f} s"
    conn.execute("SET enable_seqscan = off")
    plan = "\n".join(
        r[0]
        for r in conn.execute(
            "EXPLAIN SELECT * FROM orders WHERE metrics_customer_key(email, customer_guid) = 'c1@x.cz' "
            "ORDER BY created_at DESC LIMIT 50"
        )
    )
    assert "ix_orders_customer_history" in plan


def test_second_run_does_nothing(conn):
    first = run(conn)
    assert first.actions and not first.failed
    before = index_state(conn)
    second = run(conn)
    assert second.actions == []
    assert index_state(conn) == before


def test_invalid_index_and_reindex_leftovers_are_repaired(conn):
    run(conn)
    conn.execute("CREATE INDEX ix_orders_created_at_ccnew ON orders (created_at)")  # a failed REINDEX's leftover
    conn.execute(
        """UPDATE pg_index SET indisvalid = false
            WHERE indexrelid IN ('ix_orders_created_at'::regclass, 'ix_orders_created_at_ccnew'::regclass,
                                 'ix_product_variants_ean'::regclass)"""
    )
    report = run(conn)
    acts = {(a["action"], a["index"]) for a in report.actions}
    assert ("dropped-leftover", "ix_orders_created_at_ccnew") in acts
    assert ("repaired", "ix_orders_created_at") in acts
    assert ("repaired", "ix_product_variants_ean") in acts
    state = index_state(conn)
    assert "ix_orders_created_at_ccnew" not in state
    assert state["ix_orders_created_at"] and state["ix_product_variants_ean"]
    assert not [n for n in state if n.endswith("_ccnew") or n.endswith("_ccold")]
    assert run(conn).actions == []


def test_failed_unique_build_is_reported_and_leaves_no_leftover(conn):
    conn.execute("INSERT INTO orders (code, created_at, status_id, content_hash) VALUES ('a', now(), 1, 'h')")
    conn.execute("INSERT INTO orders (code, created_at, status_id, content_hash) VALUES ('b', now(), 1, 'h')")
    with pytest.raises(psycopg.errors.UniqueViolation):
        conn.execute("CREATE UNIQUE INDEX CONCURRENTLY ux_orders_status ON orders (status_id)")
    assert index_state(conn)["ux_orders_status"] is False  # the failed build left an INVALID index
    report = run(conn)
    assert [(a["action"], a["index"]) for a in report.failed] == [("failed", "ux_orders_status")]
    assert "23505" in report.failed[0]["detail"]
    assert not [n for n in index_state(conn) if "_cc" in n]


def test_partitioned_table_gets_per_partition_indexes_attached(conn):
    quarters = [Quarter(2025, 3), Quarter(2025, 4), Quarter(2026, 1)]
    ensure_partitions(conn, quarters)
    for q in quarters:
        conn.execute(
            """INSERT INTO order_items (order_code, item_id, created_at, position, code)
               SELECT 'o' || g, g, %s, 1, 'V' || (g %% 50) FROM generate_series(1, 500) g""",
            (q.start,),
        )
    # a killed earlier run: the parent index ON ONLY exists, one partition's index is INVALID
    conn.execute("CREATE INDEX ix_order_items_code ON ONLY order_items (code)")
    conn.execute("CREATE INDEX ix_order_items_code_2025_q3 ON order_items_2025_q3 (code)")
    conn.execute("UPDATE pg_index SET indisvalid = false WHERE indexrelid = 'ix_order_items_code_2025_q3'::regclass")
    assert index_state(conn)["ix_order_items_code"] is False

    report = run(conn)
    assert not report.failed
    attached = {a["table"] for a in report.actions if a["action"] == "attached"}
    assert attached == {q.name for q in quarters}
    state = index_state(conn)
    assert state["ix_order_items_code"] is True  # valid once every partition's index is attached
    rows = conn.execute(
        """SELECT c.relname FROM pg_inherits h JOIN pg_class c ON c.oid = h.inhrelid
            WHERE h.inhparent = 'ix_order_items_code'::regclass ORDER BY 1"""
    ).fetchall()
    assert [r[0] for r in rows] == [f"ix_order_items_code{q.name.removeprefix('order_items')}" for q in quarters]
    assert run(conn).actions == []
    # a partition created afterwards gets the index on its ATTACH
    ensure_partitions(conn, [Quarter.of(datetime(2026, 4, 2, tzinfo=UTC))])
    assert index_state(conn)["ix_order_items_code"] is True
    assert run(conn).actions == []


def test_dry_run_changes_nothing(conn):
    ensure_partitions(conn, [Quarter(2026, 1)])
    conn.execute("UPDATE pg_index SET indisvalid = false WHERE indexrelid = 'ix_orders_created_at'::regclass")
    before = index_state(conn)
    report = run(conn, dry_run=True)
    kinds = {(a["action"], a["index"]) for a in report.actions}
    assert ("repaired", "ix_orders_created_at") in kinds
    assert ("built", "ix_product_variants_ean") in kinds
    assert ("created-parent", "ix_order_items_code") in kinds
    assert index_state(conn) == before


def test_duplicates_and_unused_are_reported(conn, monkeypatch):
    monkeypatch.setattr(indexes, "UNUSED_WINDOW", timedelta(0))  # a database made minutes ago
    conn.execute("CREATE INDEX ix_orders_created_at_again ON orders (created_at)")
    report = indexes.survey(conn, "public")
    dup = [d for d in report.duplicates if d["table"] == "orders"]
    assert dup and dup[0]["indexes"] == ["ix_orders_created_at", "ix_orders_created_at_again"]
    assert "ix_orders_created_at_again" in {u["index"] for u in report.unused}


def test_built_online_indexes_are_invisible_to_autogenerate(db_url, conn):
    import sqlalchemy as sa
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from db.connection import sqlalchemy_url
    from models.autogenerate import include_object
    from models.tables import metadata

    ensure_partitions(conn, [Quarter(2026, 1)])
    run(conn)
    assert ONLINE <= set(index_state(conn))
    engine = sa.create_engine(sqlalchemy_url(db_url))
    with engine.connect() as c:
        ctx = MigrationContext.configure(c, opts={"include_object": include_object, "compare_type": True})
        diff = compare_metadata(ctx, metadata)
    engine.dispose()
    assert diff == []


def test_no_unused_list_while_the_statistics_are_younger_than_the_window(conn):
    conn.execute("CREATE INDEX ix_orders_created_at_again ON orders (created_at)")
    report = indexes.survey(conn, "public")  # the test database was made minutes ago
    assert report.unused == [] and "once the usage statistics cover 7 days (they cover 0.0)" in report.unused_note
    conn.execute("UPDATE hub_instance SET created_at = now() - interval '8 days'")
    if conn.execute("SELECT stats_reset > now() - interval '7 days' FROM pg_stat_database "
                    "WHERE datname = current_database()").fetchone()[0]:  # fmt: skip
        pytest.skip("this server's statistics were reset within the week")
    assert "ix_orders_created_at_again" in {u["index"] for u in indexes.survey(conn, "public").unused}
