"""The snapshot loader against real PostgreSQL: counts, idempotency, never-roll-back, deletes, rejects."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import orjson
import psycopg
import pytest

from db.connection import connect
from db.loader import ApplyOptions, MassDeleteRefusedError, TooManyRejectsError, apply_snapshot_file
from db.runs import get_run, start_run
from tests.factories import customer, order, product, write_jsonl

pytestmark = pytest.mark.integration


def apply(db_url: str, entity: str, path: Path, **kw):
    with connect(db_url) as c:
        run_id = start_run(c, entity, source="file", full=kw.get("full", False))
    return apply_snapshot_file(db_url, entity, path, run_id=run_id, options=ApplyOptions(**kw))


def scalar(conn: psycopg.Connection, q: str, *args):
    return conn.execute(q, args).fetchone()[0]


def test_apply_counts_and_reapply_is_idempotent(db_url, conn, tmp_path):
    f = write_jsonl(tmp_path / "o.jsonl.gz", [order(str(i)) for i in range(50)])
    r = apply(db_url, "orders", f)
    assert (r.lines, r.inserted, r.updated, r.unchanged, r.rejected, r.child_rows) == (50, 50, 0, 0, 0, 150)
    assert scalar(conn, "SELECT count(*) FROM order_items") == 150
    assert scalar(conn, "SELECT status FROM snapshot_runs WHERE id = %s", r.run_id) == "succeeded"

    again = apply(db_url, "orders", f)
    assert (again.inserted, again.updated, again.unchanged, again.child_rows) == (0, 0, 50, 0)
    assert scalar(conn, "SELECT count(*) FROM order_items") == 150


def test_columns_are_typed_and_raw_json_kept(db_url, conn, tmp_path):
    o = order("A1", created="2026-09-14T10:21:07+0200")
    o["items"][0]["amount"] = 2.0  # seen live as a JSON number
    apply(db_url, "orders", write_jsonl(tmp_path / "o.gz", [o]))
    row = conn.execute(
        "SELECT created_at, price_with_vat, exchange_rate, paid, raw->>'code', status_id FROM orders"
    ).fetchone()
    assert row[0] == datetime(2026, 9, 14, 8, 21, 7, tzinfo=UTC)
    assert str(row[1]) == "1097.00" and str(row[2]) == "1.00000000"
    assert row[3] is False and row[4] == "A1" and row[5] == -2
    amounts = [str(a) for (a,) in conn.execute("SELECT amount FROM order_items ORDER BY position")]
    assert amounts == ["2.0", "2.000", "1.000"]


def test_keep_raw_json_off_stores_no_raw(db_url, conn, tmp_path):
    apply(db_url, "orders", write_jsonl(tmp_path / "o.gz", [order("A1")]), keep_raw=False)
    assert scalar(conn, "SELECT raw FROM orders") is None


def test_older_file_never_wins(db_url, conn, tmp_path):
    new = write_jsonl(tmp_path / "new.gz", [order("A", changed="2026-10-02T10:00:00+0200", email="new@x.cz")])
    old = write_jsonl(tmp_path / "old.gz", [order("A", changed="2026-10-01T10:00:00+0200", email="old@x.cz", items=1)])
    apply(db_url, "orders", new)
    r = apply(db_url, "orders", old)
    assert (r.inserted, r.updated, r.skipped_older) == (0, 0, 1)
    assert scalar(conn, "SELECT email FROM orders WHERE code = 'A'") == "new@x.cz"
    assert scalar(conn, "SELECT count(*) FROM order_items") == 3


def test_equal_change_time_with_new_content_updates_and_replaces_items(db_url, conn, tmp_path):
    apply(db_url, "orders", write_jsonl(tmp_path / "a.gz", [order("A", items=4)]))
    r = apply(db_url, "orders", write_jsonl(tmp_path / "b.gz", [order("A", items=2, email="other@x.cz")]))
    assert (r.updated, r.child_rows) == (1, 2)
    assert scalar(conn, "SELECT count(*) FROM order_items WHERE order_code = 'A'") == 2
    assert scalar(conn, "SELECT email FROM orders") == "other@x.cz"


def test_stored_null_change_time_is_overwritten(db_url, conn, tmp_path):
    apply(db_url, "orders", write_jsonl(tmp_path / "a.gz", [order("A", changed=None)]))
    r = apply(db_url, "orders", write_jsonl(tmp_path / "b.gz", [order("A", email="z@x.cz")]))
    assert r.updated == 1


def test_duplicate_lines_in_one_file_newest_wins(db_url, conn, tmp_path):
    f = write_jsonl(
        tmp_path / "d.gz",
        [
            order("A", changed="2026-10-02T10:00:00+0200", email="new@x.cz"),
            order("A", changed="2026-10-01T10:00:00+0200", email="old@x.cz"),
        ],
    )
    r = apply(db_url, "orders", f)
    assert (r.inserted, r.skipped_older) == (1, 1)
    assert scalar(conn, "SELECT email FROM orders") == "new@x.cz"


def test_missing_item_id_uses_negative_position(db_url, conn, tmp_path):
    o = order("A", items=2)
    for it in o["items"]:
        del it["itemId"]
    apply(db_url, "orders", write_jsonl(tmp_path / "a.gz", [o]))
    assert [r[0] for r in conn.execute("SELECT item_id FROM order_items ORDER BY position")] == [-1, -2]


def test_full_snapshot_deletes_absent_rows_and_their_items(db_url, conn, tmp_path):
    apply(db_url, "orders", write_jsonl(tmp_path / "a.gz", [order(str(i)) for i in range(10)]))
    r = apply(db_url, "orders", write_jsonl(tmp_path / "b.gz", [order(str(i)) for i in range(8)]), full=True)
    assert (r.deleted, r.unchanged) == (2, 8)
    assert scalar(conn, "SELECT count(*) FROM orders") == 8
    assert scalar(conn, "SELECT count(*) FROM order_items WHERE order_code IN ('8', '9')") == 0


def test_full_snapshot_keeps_rows_changed_after_it_was_taken(db_url, conn, tmp_path):
    both = [order("A"), order("B", changed="2026-11-20T10:00:00+0100")]
    apply(db_url, "orders", write_jsonl(tmp_path / "a.gz", both))
    r = apply(
        db_url,
        "orders",
        write_jsonl(tmp_path / "b.gz", [order("A")]),
        full=True,
        allow_mass_delete=True,
        as_of=datetime(2026, 11, 1, tzinfo=UTC),
    )
    assert r.deleted == 0
    assert scalar(conn, "SELECT count(*) FROM orders") == 2


def test_incremental_snapshot_never_deletes(db_url, conn, tmp_path):
    apply(db_url, "orders", write_jsonl(tmp_path / "a.gz", [order(str(i)) for i in range(4)]))
    r = apply(db_url, "orders", write_jsonl(tmp_path / "b.gz", [order("0")]))
    assert r.deleted == 0 and scalar(conn, "SELECT count(*) FROM orders") == 4


def test_mass_delete_guard(db_url, conn, tmp_path):
    apply(db_url, "orders", write_jsonl(tmp_path / "a.gz", [order(str(i)) for i in range(10)]))
    small = write_jsonl(tmp_path / "b.gz", [order(str(i), email="changed@x.cz") for i in range(4)])
    with pytest.raises(MassDeleteRefusedError, match="allow-mass-delete"):
        apply(db_url, "orders", small, full=True)
    assert scalar(conn, "SELECT count(*) FROM orders") == 10
    assert scalar(conn, "SELECT count(*) FROM orders WHERE email = 'changed@x.cz'") == 0
    r = apply(db_url, "orders", small, full=True, allow_mass_delete=True)
    assert r.deleted == 6 and scalar(conn, "SELECT count(*) FROM orders") == 4


def test_partitions_created_for_old_and_future_quarters_on_utc_boundaries(db_url, conn, tmp_path):
    f = write_jsonl(
        tmp_path / "p.gz",
        [
            order("old", created="2015-02-01T10:00:00+0100"),
            order("future", created="2027-06-30T23:30:00+0100"),  # dates over a year ahead are rejected
            # 01:00 Prague time on 1 April is still 31 March in UTC: Q1.
            order("edge", created="2026-04-01T01:00:00+0200"),
        ],
    )
    r = apply(db_url, "orders", f)
    assert set(r.partitions_created) == {"order_items_2015_q1", "order_items_2027_q2", "order_items_2026_q1"}
    where = dict(conn.execute("SELECT order_code, tableoid::regclass::text FROM order_items GROUP BY 1, 2").fetchall())
    assert where == {"old": "order_items_2015_q1", "future": "order_items_2027_q2", "edge": "order_items_2026_q1"}
    assert (
        scalar(
            conn,
            "SELECT count(*) FROM pg_partitioned_table p JOIN pg_class c ON c.oid = p.partrelid "
            "WHERE c.relname = 'order_items' AND p.partdefid <> 0",
        )
        == 0
    )  # no default partition


def test_rejects_recorded_and_good_lines_applied_under_threshold(db_url, conn, tmp_path):
    good = [order(str(i)) for i in range(400)]
    bad_date = order("bad-date", created="2026-13-01T00:00:00+0100")
    no_created = order("no-created")
    del no_created["creationTime"], no_created["changeTime"]
    bad_num = order("bad-num")
    bad_num["price"]["withVat"] = "12,50"
    f = write_jsonl(
        tmp_path / "r.gz", [*good[:100], b"{not json", bad_date, *good[100:], order("", items=1), no_created, bad_num]
    )
    r = apply(db_url, "orders", f, reject_threshold=0.02)
    assert (r.inserted, r.rejected, r.lines) == (400, 5, 405)
    rows = conn.execute("SELECT line_no, reason, line FROM snapshot_rejects ORDER BY line_no").fetchall()
    assert [x[0] for x in rows] == [101, 102, 403, 404, 405]
    reasons = " | ".join(x[1] for x in rows)
    for part in (
        "invalid JSON",
        "creationTime: invalid date-time",
        "missing key code",
        "creationTime and changeTime are both null",
        "price_with_vat: invalid number",
    ):
        assert part in reasons
    assert rows[0][2] == "{not json"
    assert all(len(x[2]) <= 2000 for x in rows)


def test_over_reject_threshold_rolls_back_but_keeps_rejects(db_url, conn, tmp_path):
    f = write_jsonl(tmp_path / "r.gz", [order("1"), order("2"), b"garbage", b"[1, 2]"])
    with pytest.raises(TooManyRejectsError, match="2 of 4 lines rejected"):
        apply(db_url, "orders", f)
    assert scalar(conn, "SELECT count(*) FROM orders") == 0
    assert scalar(conn, "SELECT count(*) FROM order_items") == 0
    assert scalar(conn, "SELECT count(*) FROM snapshot_rejects") == 2


def test_plain_jsonl_and_blank_lines(db_url, conn, tmp_path):
    f = write_jsonl(tmp_path / "plain.jsonl", [order("A"), "", order("B")], gz=False)
    r = apply(db_url, "orders", f)
    assert (r.lines, r.inserted, r.rejected) == (2, 2, 0)


def test_full_snapshot_with_unreadable_reject_skips_deletes(db_url, conn, tmp_path):
    apply(db_url, "orders", write_jsonl(tmp_path / "a.gz", [order(str(i)) for i in range(200)]))
    lines = [order(str(i)) for i in range(199)] + [b"{broken"]
    r = apply(db_url, "orders", write_jsonl(tmp_path / "b.gz", lines), full=True)
    assert r.deleted == 0 and "deletes skipped" in r.deletes_skipped_reason
    # A reject with a readable key protects that row; the rest are deleted.
    bad = order("199", created="not a date")
    r = apply(db_url, "orders", write_jsonl(tmp_path / "c.gz", [order(str(i)) for i in range(150)] + [bad]), full=True)
    assert r.deleted == 49
    assert scalar(conn, "SELECT count(*) FROM orders WHERE code = '199'") == 1


def test_customers_and_products_with_variants(db_url, conn, tmp_path):
    r = apply(
        db_url,
        "customers",
        write_jsonl(tmp_path / "c.gz", [customer("c1"), customer("c2", email=None), customer("odd guid 7")]),
    )
    assert r.inserted == 3
    assert dict(conn.execute("SELECT guid, email FROM customers").fetchall()) == {
        "c1": "jana.novakova@example.cz",
        "c2": None,
        "odd guid 7": "jana.novakova@example.cz",
    }

    apply(
        db_url,
        "products",
        write_jsonl(tmp_path / "p.gz", [product("p1", variants=["V1", "V2"]), product("p2", variants=["V3"])]),
    )
    assert scalar(conn, "SELECT count(*) FROM product_variants") == 3
    # p1 drops V2; V3 moves to p1 (variant codes are unique shop-wide).
    r = apply(
        db_url,
        "products",
        write_jsonl(tmp_path / "p2.gz", [product("p1", changed="2026-10-01T00:00:00+0200", variants=["V1", "V3"])]),
    )
    assert r.updated == 1
    assert dict(conn.execute("SELECT code, product_guid FROM product_variants").fetchall()) == {"V1": "p1", "V3": "p1"}


def test_run_row_records_counters(db_url, conn, tmp_path):
    r = apply(db_url, "orders", write_jsonl(tmp_path / "a.gz", [order("A"), b"x"]), reject_threshold=0.6)
    run = get_run(conn, r.run_id)
    assert (run["status"], run["lines"], run["inserted"], run["rejected"]) == ("succeeded", 2, 1, 1)


def test_raw_json_keeps_escapes_and_unicode_exactly(db_url, conn, tmp_path):
    o = order("esc", email='a\\b"c@x.cz')
    o["billingAddress"]["street"] = 'Tab\there, newline\nthere, back\\slash, "quoted", ž, 🛒'
    apply(db_url, "orders", write_jsonl(tmp_path / "e.gz", [o]))
    raw, street, email = conn.execute("SELECT raw::text, billing_street, email FROM orders").fetchone()
    import orjson

    assert orjson.loads(raw) == o
    assert street == o["billingAddress"]["street"] and email == o["email"]


def test_worker_processes_give_the_same_result_as_in_process(make_db, tmp_path):
    """Big files are mapped in worker processes; the outcome must not depend on it."""
    lines = [order(str(i), created=f"20{20 + i % 7}-0{1 + i % 9}-10T10:00:00+0100") for i in range(300)]
    lines[10] = b"{broken"
    lines[20]["price"]["withVat"] = "1,5"  # refused by PostgreSQL: the batch is redone line by line
    lines[30] = order("5", changed="2026-12-01T00:00:00+0100", email="dup@x.cz")  # a repeated key
    f = write_jsonl(tmp_path / "w.gz", lines)
    outcomes = []
    for workers in (0, 2):
        db = make_db()
        r = apply(db, "orders", f, workers=workers, chunk_bytes=64 << 10, reject_threshold=0.05)
        with psycopg.connect(db) as c:
            rows = c.execute("SELECT code, email, content_hash FROM orders ORDER BY code").fetchall()
            items = c.execute("SELECT count(*) FROM order_items").fetchone()[0]
            rejects = c.execute("SELECT line_no, reason FROM snapshot_rejects ORDER BY line_no").fetchall()
        outcomes.append(((r.inserted, r.updated, r.rejected, r.skipped_older), rows, items, rejects))
    assert outcomes[0] == outcomes[1]
    (counts, rows, items, rejects) = outcomes[0]
    assert counts == (297, 1, 2, 0)
    assert [x[0] for x in rejects] == [11, 21]
    assert dict((c, e) for c, e, _ in rows)["5"] == "dup@x.cz"


@pytest.mark.parametrize("workers", [0, 2])
def test_line_numbers_hold_across_blocks_with_blank_lines_and_crlf(db_url, conn, tmp_path, workers):
    """Blocks are cut at line ends; numbering, blank lines and CRLF must not depend on where."""
    lines = []
    for i in range(400):
        lines.append(orjson.dumps(order(str(i))) if i not in (150, 333) else b'{"code": "bad", broken')
        if i % 50 == 0:
            lines.append(b"   ")
    data = b"\r\n".join(lines)  # and no line end after the last line
    f = tmp_path / "crlf.jsonl"
    f.write_bytes(data)
    r = apply(db_url, "orders", f, workers=workers, chunk_bytes=16 << 10, reject_threshold=0.05)
    assert (r.lines, r.inserted, r.rejected) == (400, 398, 2)
    expected = [n for n, line in enumerate(lines, 1) if line.startswith(b'{"code": "bad"')]
    got = [n for (n,) in conn.execute("SELECT line_no FROM snapshot_rejects ORDER BY line_no")]
    assert got == expected
    assert conn.execute("SELECT count(*) FROM orders WHERE code = '399'").fetchone()[0] == 1


def test_changed_lines_of_many_chunks_share_one_upsert_round(db_url, conn, tmp_path, monkeypatch):
    """A nightly full snapshot: a few changed orders in every chunk are upserted in one staged round,
    not one per chunk; a key changed in one chunk and again in a later one still ends at its newest
    line, and only the changed orders (and their items) are written."""
    from db.loader.write import TableWriter

    first = [order(f"{i:04}", items=2) for i in range(300)]
    apply(db_url, "orders", write_jsonl(tmp_path / "a.gz", first), full=True)
    xmins = {r[0] for r in conn.execute("SELECT DISTINCT xmin::text FROM orders")}
    conn.commit()
    nightly = list(first)
    changed = {f"{i:04}" for i in range(0, 300, 25)}  # 12 changed, spread over the file
    for code in changed:
        nightly[int(code)] = order(code, items=3, email=f"{code}@x.cz", changed="2026-09-16T08:00:00+0200")
    nightly.append(order("0050", items=1, email="later@x.cz", changed="2026-09-17T08:00:00+0200"))
    rounds = []
    real = TableWriter.upsert_changed
    monkeypatch.setattr(
        TableWriter, "upsert_changed", lambda self, lines: rounds.append(len(lines)) or real(self, lines)
    )

    r = apply(db_url, "orders", write_jsonl(tmp_path / "b.gz", nightly), full=True, chunk_bytes=4096)

    assert (r.inserted, r.updated, r.unchanged, r.deleted, r.rejected) == (0, 13, 288, 0, 0)
    assert rounds == [12, 1]  # one round for the 12, one more for the key seen again in a later chunk
    assert scalar(conn, "SELECT email FROM orders WHERE code = '0050'") == "later@x.cz"
    assert scalar(conn, "SELECT count(*) FROM order_items WHERE order_code = '0050'") == 1
    written = {r[0] for r in conn.execute("SELECT code FROM orders WHERE xmin::text <> ALL(%s)", (list(xmins),))}
    assert written == changed
    assert scalar(conn, "SELECT count(*) FROM order_items") == 288 * 2 + 11 * 3 + 1


def test_replacing_the_items_of_changed_orders_reads_no_whole_partition(db_url, conn, tmp_path):
    """The delete of a changed order's old items probes the index by the written keys; joined with the
    statistics-less stage table it was planned as a scan of every order_items partition, each round."""
    first = [order(f"{i:05}", items=2) for i in range(3000)]
    apply(db_url, "orders", write_jsonl(tmp_path / "a.gz", first), full=True)
    conn.commit()
    with connect(db_url, autocommit=True) as c:
        c.execute("VACUUM ANALYZE order_items")

    def seq_scans() -> int:
        with connect(db_url) as c:  # a fresh session: pg_stat_* is read once per transaction
            c.execute("SELECT pg_stat_force_next_flush()")
            return scalar(c, "SELECT sum(seq_scan) FROM pg_stat_user_tables WHERE relname LIKE 'order_items_%%'")

    before = seq_scans()
    nightly = [order(o["code"], items=3, email="n@x.cz") if i % 500 == 0 else o for i, o in enumerate(first)]
    r = apply(db_url, "orders", write_jsonl(tmp_path / "b.gz", nightly), full=True)
    assert (r.updated, r.child_rows) == (6, 18)
    assert seq_scans() == before


@pytest.mark.parametrize("newer_first", [True, False])
def test_a_variant_code_twice_in_one_batch_goes_to_the_product_changed_last(db_url, conn, tmp_path, newer_first):
    """previous review 2.6: DISTINCT ON (code) picked an arbitrary variant; the winner is now decided."""
    apply(db_url, "products", write_jsonl(tmp_path / "p.gz", [product("pa", variants=["A1"]), product("pb")]))
    older = product("pa", changed="2026-10-01T00:00:00+0200", variants=["A1", "VX"])
    newer = product("pb", changed="2026-10-02T00:00:00+0200", variants=["VX"])
    lines = [newer, older] if newer_first else [older, newer]
    r = apply(db_url, "products", write_jsonl(tmp_path / "p2.gz", lines), workers=0)
    assert r.updated == 2 and r.rejected == 0
    assert dict(conn.execute("SELECT code, product_guid FROM product_variants").fetchall()) == {"A1": "pa", "VX": "pb"}
