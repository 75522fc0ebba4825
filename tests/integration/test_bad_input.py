"""Input that is valid for Shoptet but awkward for PostgreSQL (issue 16 §3): NUL in text, a null creationTime."""

from __future__ import annotations

import orjson
import psycopg

from db.connection import libpq_url
from db.loader import ApplyOptions, apply_snapshot_file
from db.runs import start_run
from tests.factories import order, write_jsonl


def apply(db_url, path, **kw):
    with psycopg.connect(libpq_url(db_url), autocommit=True) as c:
        run_id = start_run(c, "orders", source="file", full=False)
    return apply_snapshot_file(db_url, "orders", path, run_id=run_id, options=ApplyOptions(workers=0, **kw))


def test_a_nul_in_text_is_stored_without_it_counted_and_raw_kept_as_sent(db_url, conn, tmp_path):
    nul = order("N1", items=2)
    nul["email"] = "jana\u0000@example.cz"
    nul["items"][1]["name"] = "Mug\u0000 blue"
    nul["billingAddress"]["street"] = "\u0000"
    plain = order("P1", items=1)
    r = apply(db_url, write_jsonl(tmp_path / "o.jsonl.gz", [nul, plain]))
    assert (r.inserted, r.rejected, r.nul_stripped) == (2, 0, 1), r
    assert r.counters()["nul_stripped"] == 1
    row = conn.execute("SELECT email, billing_street, raw::text FROM orders WHERE code = 'N1'").fetchone()
    assert row[:2] == ("jana@example.cz", "")
    assert "\\u0000" in row[2]  # raw keeps the line as the shop sent it (json holds the escape)
    assert orjson.loads(row[2])["email"] == "jana\u0000@example.cz"
    names = conn.execute("SELECT name FROM order_items WHERE order_code = 'N1' ORDER BY position").fetchall()
    assert names[1] == ("Mug blue",)
    # the same file again: unchanged (the hash is of the line as sent); the stripped line is counted again
    again = apply(db_url, write_jsonl(tmp_path / "o2.jsonl.gz", [nul, plain]))
    assert (again.unchanged, again.nul_stripped) == (2, 1)


def test_a_null_creation_time_is_filed_under_the_change_time(db_url, conn, tmp_path):
    o = order("C1", items=2)
    o["creationTime"] = None
    neither = order("C2", items=1)
    neither["creationTime"] = neither["changeTime"] = None
    r = apply(db_url, write_jsonl(tmp_path / "c.jsonl.gz", [o, neither]), reject_threshold=1.0)
    assert (r.inserted, r.rejected) == (1, 1)
    created, changed, raw_created = conn.execute(
        "SELECT created_at, changed_at, raw->>'creationTime' FROM orders WHERE code = 'C1'"
    ).fetchone()
    assert created == changed and raw_created is None
    assert conn.execute(
        "SELECT count(*) FROM order_items WHERE order_code = 'C1' AND created_at = %s", (changed,)
    ).fetchone() == (2,)
    (reason,) = conn.execute("SELECT reason FROM snapshot_rejects").fetchone()
    assert reason.startswith("creationTime and changeTime are both null")


def test_a_key_of_nothing_but_nul_is_a_reject_naming_the_key(db_url, conn, tmp_path):
    r = apply(db_url, write_jsonl(tmp_path / "k.jsonl.gz", [order("\u0000"), order("K1")]), reject_threshold=1.0)
    assert (r.inserted, r.rejected) == (1, 1)
    (reason,) = conn.execute("SELECT reason FROM snapshot_rejects").fetchone()
    assert reason == "code: the key holds nothing but NUL characters"
