"""Lines the table holds byte for byte are skipped before they are parsed (db/loader/known.py).

With ``ix_orders_content_hash`` present; without it the loader parses every line. The plain loader
tests (``test_loader.py``) run again at the end of this file with the index present.
"""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import psycopg
import pytest

from db.connection import libpq_url
from db.dates import DateWindow
from db.loader import known
from db.loader import parse as loader_parse
from db.mapping import ENTITIES
from tests.factories import order, write_jsonl
from tests.integration import test_loader as plain
from tests.integration.test_loader import apply, scalar

pytestmark = pytest.mark.integration

INDEX = "CREATE INDEX ix_orders_content_hash ON orders (content_hash)"


@pytest.fixture
def db_url(make_db) -> str:
    """A fresh, migrated database with the content-hash index (as after ``hub indexes``)."""
    url = make_db()
    with psycopg.connect(libpq_url(url), autocommit=True) as c:
        c.execute(INDEX)
    return url


@pytest.fixture
def mapped(monkeypatch) -> list[bytes]:
    """The lines the loader parsed and mapped (in this process: workers=0)."""
    seen: list[bytes] = []
    real = loader_parse._map_line

    def counted(spec, text, exact):
        seen.append(text)
        return real(spec, text, exact)

    monkeypatch.setattr(loader_parse, "_map_line", counted)
    return seen


def code_of(text: bytes) -> str:
    return orjson.loads(text)["code"]


def first_load(db_url, tmp_path, n: int = 20, **kw):
    lines = [order(f"{i:03}") for i in range(n)]
    apply(db_url, "orders", write_jsonl(tmp_path / "first.gz", lines), full=True, workers=0, **kw)
    return lines


def test_unchanged_lines_of_a_full_snapshot_are_not_parsed(db_url, conn, tmp_path, mapped):
    lines = first_load(db_url, tmp_path)
    mapped.clear()
    nightly = list(lines)
    nightly[3] = order("003", email="new@x.cz", changed="2026-09-16T08:00:00+0200")
    nightly.append(order("999"))

    r = apply(db_url, "orders", write_jsonl(tmp_path / "n.gz", nightly), full=True, workers=0)

    assert sorted(code_of(t) for t in mapped) == ["003", "999"]  # the changed and the new line, no other
    assert (r.lines, r.inserted, r.updated, r.unchanged, r.deleted, r.rejected) == (21, 1, 1, 19, 0, 0)
    assert scalar(conn, "SELECT email FROM orders WHERE code = '003'") == "new@x.cz"
    assert scalar(conn, "SELECT count(*) FROM orders") == 21
    assert scalar(conn, "SELECT unchanged FROM snapshot_runs WHERE id = %s", r.run_id) == 19


def test_a_skipped_line_is_never_parsed_so_it_cannot_be_a_reject(db_url, conn, tmp_path):
    """The stored row came from these very bytes: the line is unchanged even where, parsed, today's date
    window would reject it (proof it was not parsed)."""
    lines = first_load(db_url, tmp_path, n=5)
    narrow = DateWindow(datetime(2027, 1, 1, tzinfo=UTC), datetime(2027, 12, 31, tzinfo=UTC))
    r = apply(db_url, "orders", write_jsonl(tmp_path / "n.gz", lines), full=True, workers=0, window=narrow)
    assert (r.unchanged, r.rejected, r.deleted) == (5, 0, 0)


def test_the_full_snapshot_deletes_only_rows_absent_skipped_keys_count_as_seen(db_url, conn, tmp_path, mapped):
    lines = first_load(db_url, tmp_path, n=10)
    mapped.clear()
    r = apply(db_url, "orders", write_jsonl(tmp_path / "n.gz", lines[:8]), full=True, workers=0)
    assert mapped == []
    assert (r.deleted, r.unchanged) == (2, 8)
    assert [c for (c,) in conn.execute("SELECT code FROM orders ORDER BY code")] == [f"{i:03}" for i in range(8)]
    assert scalar(conn, "SELECT count(*) FROM order_items WHERE order_code IN ('008', '009')") == 0


def test_worker_processes_skip_too(db_url, conn, tmp_path):
    lines = first_load(db_url, tmp_path, n=30)
    lines[7] = order("007", email="new@x.cz", changed="2026-09-16T08:00:00+0200")
    r = apply(db_url, "orders", write_jsonl(tmp_path / "n.gz", lines[:25]), full=True, workers=2, chunk_bytes=4096)
    assert (r.updated, r.unchanged, r.deleted) == (1, 24, 5)
    assert scalar(conn, "SELECT email FROM orders WHERE code = '007'") == "new@x.cz"


def test_without_the_index_every_line_is_parsed(db_url, conn, tmp_path, mapped):
    conn.execute("DROP INDEX ix_orders_content_hash")
    lines = first_load(db_url, tmp_path, n=10)
    with plain.connect(db_url) as c:
        assert not known.usable(c, "public", ENTITIES["orders"])
    mapped.clear()
    r = apply(db_url, "orders", write_jsonl(tmp_path / "n.gz", lines[:8]), full=True, workers=0)
    assert len(mapped) == 8
    assert (r.deleted, r.unchanged) == (2, 8)


def test_an_invalid_index_or_an_empty_table_is_not_used(db_url, conn, tmp_path):
    with plain.connect(db_url) as c:
        assert not known.usable(c, "public", ENTITIES["orders"])  # empty: a first load looks nothing up
    first_load(db_url, tmp_path, n=2)
    with plain.connect(db_url) as c:
        assert known.usable(c, "public", ENTITIES["orders"])
    conn.execute("UPDATE pg_index SET indisvalid = false WHERE indexrelid = 'ix_orders_content_hash'::regclass")
    with plain.connect(db_url) as c:
        assert not known.usable(c, "public", ENTITIES["orders"])


def test_an_invalidated_hash_is_not_skipped(db_url, conn, tmp_path, mapped):
    """A restored archive's orders (content_hash '') and erased rows ('erased') hold no line's hash."""
    lines = first_load(db_url, tmp_path, n=6)
    conn.execute("UPDATE orders SET content_hash = '' WHERE code = '001'")
    conn.execute("UPDATE orders SET content_hash = 'erased' WHERE code = '002'")
    conn.execute("DELETE FROM order_items WHERE order_code = '001'")
    mapped.clear()
    r = apply(db_url, "orders", write_jsonl(tmp_path / "n.gz", lines), full=True, workers=0)
    assert sorted(code_of(t) for t in mapped) == ["001", "002"]
    assert (r.updated, r.unchanged) == (2, 4)
    assert scalar(conn, "SELECT count(*) FROM order_items WHERE order_code = '001'") == 3


@pytest.mark.parametrize("chunk_bytes", [4096, 1 << 20], ids=["other-chunk", "same-chunk"])
def test_a_key_written_earlier_in_the_file_is_confirmed_against_that_write(db_url, conn, tmp_path, chunk_bytes):
    """The lookup sees the rows committed before the apply; the apply confirms each skip in its own
    transaction. A line identical to the stored row, after a newer line of its key in the same file, is
    then older than the row the transaction wrote: skipped as older, as without the shortcut."""
    lines = first_load(db_url, tmp_path, n=20)
    newer = order("005", email="newer@x.cz", changed="2026-09-16T08:00:00+0200")
    nightly = [lines[5], *lines[:5], newer, *lines[6:], lines[5]]  # the old bytes before and after the newer
    r = apply(db_url, "orders", write_jsonl(tmp_path / "n.gz", nightly), full=True, workers=0, chunk_bytes=chunk_bytes)
    assert (r.updated, r.unchanged, r.skipped_older, r.deleted) == (1, 20, 1, 0)
    assert scalar(conn, "SELECT email FROM orders WHERE code = '005'") == "newer@x.cz"


def test_a_line_with_a_nul_escape_is_parsed_and_counted(db_url, conn, tmp_path):
    lines = first_load(db_url, tmp_path, n=3)
    lines[1] = order("001", email="a\u0000b@x.cz")
    apply(db_url, "orders", write_jsonl(tmp_path / "a.gz", lines), full=True, workers=0)
    r = apply(db_url, "orders", write_jsonl(tmp_path / "b.gz", lines), full=True, workers=0)
    assert (r.unchanged, r.nul_stripped) == (3, 1)


# The plain loader tests again, with the index present (this module's db_url).
for _name in dir(plain):
    if _name.startswith("test_"):
        globals()[f"{_name}__with_content_hash_index"] = getattr(plain, _name)
