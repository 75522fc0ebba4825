"""Retention and restore are exact: drop only what the archive holds (M7), restore only what it holds (M6), make
restored items current (M5), finish a detach a reader delayed (L4), repair what a killed run left (L5)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import psycopg
import pytest

from db import pg_tools
from db.connection import libpq_url
from db.partitions import archive as partition_archive
from db.partitions import restore, retire
from db.partitions.archive import ArchiveError
from db.partitions.rollover import Quarter, archived_quarters, existing_partitions
from flows import runtime
from flows.config import get_config
from flows.partitions import partition_maintenance, restore_partition_archive
from flows.snapshot import import_file
from tests.factories import order, write_jsonl
from tests.integration.test_partition_maintenance import NOW, items, q, shop_file

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module", autouse=True)
def harness(prefect_harness):
    yield


@pytest.fixture
def hub(db_url, tmp_path, monkeypatch, no_retry_waits):
    monkeypatch.setenv("HUB_ARCHIVE_DIR", str(tmp_path / "archive"))
    get_config.cache_clear()
    with runtime.override(database_url=db_url):
        yield tmp_path / "archive"
    get_config.cache_clear()


Q1 = Quarter(2020, 1)  # 9 items of 3 orders in shop_file


def _archive(db_url: str, hub: Path, tmp_path: Path) -> Path:
    import_file("orders", shop_file(tmp_path / "shop.jsonl.gz"))
    with psycopg.connect(libpq_url(db_url), autocommit=True) as c:
        return partition_archive.archive_partition(c, db_url, "public", Q1, hub)


@pytest.mark.parametrize("write", ["INSERT", "UPDATE"])
def test_retention_keeps_a_quarter_written_after_its_dump(hub, db_url, tmp_path, write):
    """M7: counted (and checksummed) in the dump's snapshot, rechecked after DETACH: a mismatch drops nothing."""
    dump = _archive(db_url, hub, tmp_path)
    assert partition_archive.read_manifest(dump).rows == 9
    if write == "INSERT":  # an import whose lock lapsed, writing after the dump
        q(db_url, "INSERT INTO order_items (order_code, item_id, created_at, position) "
                  "VALUES ('20000001', 99, '2020-02-10 09:00+00', 9)")  # fmt: skip
    else:
        q(db_url, "UPDATE order_items SET amount = amount + 1 WHERE created_at < '2020-04-01' AND item_id = 1000")
    before = items(db_url, "created_at < '2020-04-01'")
    with psycopg.connect(libpq_url(db_url), autocommit=True) as c:
        with pytest.raises(retire.ArchiveMismatch, match="written after the dump"):
            retire.retire_partition(c, dump, sleep=lambda s: None)
        assert Q1.name in existing_partitions(c) and archived_quarters(c) == frozenset()
    assert items(db_url, "created_at < '2020-04-01'") == before  # attached again, every row
    assert q(db_url, "SELECT dropped_at FROM partition_archives") == [(None,)]


def test_a_restore_that_loads_nothing_lifts_nothing(hub, db_url, tmp_path):
    """M6: pg_restore -n <a schema the dump lacks> exits 0 and loads 0 rows: counted, refused, the horizon stays."""
    import_file("orders", shop_file(tmp_path / "shop.jsonl.gz"))
    out = partition_maintenance(now=NOW)
    dump = next(Path(a["file"]) for a in out["archived"] if a["partition"] == Q1.name)
    with psycopg.connect(libpq_url(db_url), autocommit=True) as c:
        with pytest.raises(ArchiveError, match="loaded 0 rows, the archive's manifest says 9"):
            restore.restore_archive(c, db_url, "hub", dump)
        assert archived_quarters(c) == {(2020, 1), (2021, 2)}
        assert c.execute("SELECT to_regclass(%s)", (Q1.name,)).fetchone()[0] is None  # its own table dropped
        manifest = partition_archive.manifest_path(dump)  # a manifest that says more rows than the dump has
        manifest.write_text(manifest.read_text().replace('"rows": 9', '"rows": 10'))
        with pytest.raises(ArchiveError, match="loaded 9 rows, the archive's manifest says 10"):
            restore.restore_archive(c, db_url, "public", dump)
        assert archived_quarters(c) == {(2020, 1), (2021, 2)} and Q1.name not in existing_partitions(c)
    assert items(db_url, "created_at < '2020-04-01'") == []


def test_restored_items_of_orders_changed_while_archived_are_rewritten(hub, db_url, tmp_path):
    """M5, the review's probe: 2 items archived, the order changes to 4 while archived; after the restore the same
    current line gives 4 items. Items of an order deleted while archived do not come back as orphans."""
    created = "2020-02-10T10:00:00+0100"
    first = [order("20000001", created=created, changed=created, items=2),
             order("20000002", created=created, changed=created, items=2)]  # fmt: skip
    import_file("orders", write_jsonl(tmp_path / "first.jsonl.gz", first))
    out = partition_maintenance(now=NOW)
    dump = next(Path(a["file"]) for a in out["archived"] if a["partition"] == Q1.name)
    changed = write_jsonl(
        tmp_path / "changed.jsonl.gz", [order("20000001", created=created, changed="2026-11-01T10:00:00+0100", items=4)]
    )
    assert import_file("orders", changed)["beyond_retention"] == 1
    q(db_url, "DELETE FROM orders WHERE code = '20000002'")  # as a full snapshot would while archived

    restored = restore_partition_archive(dump)

    assert restored["rows"] == 4 and restored["orders_invalidated"] == 1 and restored["orphans_deleted"] == 2
    assert [r[:2] for r in items(db_url)] == [("20000001", 1000), ("20000001", 1001)]  # as archived
    again = import_file("orders", changed)  # the same current line, re-applied
    assert again["updated"] == 1
    assert [r[:2] for r in items(db_url)] == [("20000001", 1000 + i) for i in range(4)]


class _ReaderUntilFinalizeWaits(threading.Thread):
    """Ends the reader's transaction once a FINALIZE has waited for it over a second (or after 30 s)."""

    def __init__(self, db_url: str, reader: psycopg.Connection):
        super().__init__(daemon=True)
        self.url, self.reader, self.saw_finalize_wait = db_url, reader, False

    def run(self) -> None:
        deadline = time.monotonic() + 30
        with psycopg.connect(libpq_url(self.url), autocommit=True) as c:
            while time.monotonic() < deadline and not self.saw_finalize_wait:
                self.saw_finalize_wait = c.execute(
                    """SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE query ILIKE '%%DETACH PARTITION%%FINALIZE%%'
                         AND wait_event_type = 'Lock' AND now() - state_change > interval '1 second')"""
                ).fetchone()[0]
                time.sleep(0.05)  # polling a condition, not waiting out a fixed time
        self.reader.commit()


def test_a_reader_delays_the_detach_but_never_leaves_the_quarter_pending(hub, db_url, tmp_path):
    """L4: phase 2 of DETACH CONCURRENTLY times out on an open reader; FINALIZE then waits it out."""
    dump = _archive(db_url, hub, tmp_path)
    reader = psycopg.connect(libpq_url(db_url))
    reader.execute("SELECT count(*) FROM order_items")  # a BI query's open transaction
    ender = _ReaderUntilFinalizeWaits(db_url, reader)
    ender.start()
    try:
        with psycopg.connect(libpq_url(db_url), autocommit=True) as c:
            retire.retire_partition(c, dump, lock_timeout="100ms", attempts=2, sleep=lambda s: None)
            assert c.execute("SELECT to_regclass(%s)", (Q1.name,)).fetchone()[0] is None
            assert archived_quarters(c) == {(2020, 1)}
    finally:
        ender.join(35)
        reader.close()
    assert ender.saw_finalize_wait


def test_reconcile_records_a_drop_whose_dropped_at_was_lost(hub, db_url, tmp_path):
    """L5: killed after the DROP, before dropped_at: the next run records it, so the horizon applies."""
    dump = _archive(db_url, hub, tmp_path)
    with psycopg.connect(libpq_url(db_url), autocommit=True) as c:
        retire.retire_partition(c, dump, sleep=lambda s: None)
    q(db_url, "UPDATE partition_archives SET dropped_at = NULL")
    out = partition_maintenance(now=NOW)
    assert any("recorded order_items_2020_q1 as dropped" in line for line in out["repaired"]), out["repaired"]
    with psycopg.connect(libpq_url(db_url), autocommit=True) as c:
        assert (2020, 1) in archived_quarters(c)
    assert q(db_url, "SELECT count(*) FROM partition_archives WHERE partition = %s", Q1.name) == [(1,)]


def test_reconcile_retires_a_quarter_detached_but_not_dropped(hub, db_url, tmp_path):
    """L5: killed after the DETACH, before the DROP: the standalone table is checked against its archive, dropped."""
    dump = _archive(db_url, hub, tmp_path)
    with psycopg.connect(libpq_url(db_url), autocommit=True) as c:
        partition_archive.record_archive(c, partition_archive.verify_archive(dump, _major(c)), dump)
        c.execute(f"ALTER TABLE order_items DETACH PARTITION {Q1.name}")
    out = partition_maintenance(now=NOW)
    assert any("dropped the detached order_items_2020_q1" in line for line in out["repaired"]), out["repaired"]
    with psycopg.connect(libpq_url(db_url), autocommit=True) as c:
        assert c.execute("SELECT to_regclass(%s)", (Q1.name,)).fetchone()[0] is None
        assert (2020, 1) in archived_quarters(c)


def _major(c: psycopg.Connection) -> int:
    return pg_tools.server_major(c)


def test_retention_does_not_detach_once_the_jobs_lock_session_is_gone(hub, db_url, tmp_path):
    """M7: the lock session is checked before the DETACH (another job may write once it died): LockLost, kept."""
    from datetime import UTC, datetime

    from db.locks import ActiveLock, LockLost

    dump = _archive(db_url, hub, tmp_path)
    with psycopg.connect(libpq_url(db_url), autocommit=True) as c:
        dead = ActiveLock("orders", 4242, backend_pid=1, backend_start=datetime.now(UTC), dbname=c.info.dbname)
        with pytest.raises(LockLost):
            retire.retire_partition(c, dump, sleep=lambda s: None, guards=[dead])
        assert retire.detach_state(c, Q1.name) == "attached" and archived_quarters(c) == frozenset()


def test_reconcile_attaches_a_detached_quarter_that_differs_from_its_archive_and_goes_on(hub, db_url, tmp_path):
    """L5 + M7: a standalone table holding a row its archive lacks is attached again, not dropped; the run goes on."""
    dump = _archive(db_url, hub, tmp_path)
    with psycopg.connect(libpq_url(db_url), autocommit=True) as c:
        partition_archive.record_archive(c, partition_archive.verify_archive(dump, _major(c)), dump)
        c.execute(f"ALTER TABLE order_items DETACH PARTITION {Q1.name}")
        c.execute(f"INSERT INTO {Q1.name} (order_code, item_id, created_at, position) "
                  "VALUES ('20000001', 99, '2020-02-10 09:00+00', 9)")  # fmt: skip
        repaired = retire.reconcile(c, sleep=lambda s: None)
        assert len(repaired) == 1 and repaired[0].startswith(f"kept {Q1.name}"), repaired
        assert retire.detach_state(c, Q1.name) == "attached"
    assert len(items(db_url, "created_at < '2020-04-01'")) == 10


def test_a_restored_quarter_is_archived_again_only_once_its_invalidated_items_are_rewritten(hub, db_url, tmp_path):
    """The soak's restore-archive: retention retires a restored quarter again (it is still past the horizon),
    but not while orders the restore invalidated await their items' rewrite: archiving then would keep the
    archived (stale) items for good, since imports drop items beyond retention."""
    created = "2020-02-10T10:00:00+0100"
    import_file("orders", write_jsonl(tmp_path / "first.jsonl.gz", [order("20000001", created=created, items=2)]))
    dump = next(Path(a["file"]) for a in partition_maintenance(now=NOW)["archived"] if a["partition"] == Q1.name)
    changed = write_jsonl(
        tmp_path / "changed.jsonl.gz", [order("20000001", created=created, changed="2026-11-01T10:00:00+0100", items=4)]
    )
    assert import_file("orders", changed)["beyond_retention"] == 1
    assert restore_partition_archive(dump)["orders_invalidated"] == 1

    kept = partition_maintenance(now=NOW)  # the weekly run, before any snapshot rewrote the order's items
    assert kept["archived"] == [] and any(Q1.name in line and "rewrite" in line for line in kept["plan"])
    assert Q1.name in existing_partitions_of(db_url)

    import_file("orders", changed)  # the next snapshot: 4 items
    again = partition_maintenance(now=NOW)
    assert [a["partition"] for a in again["archived"]] == [Q1.name] and again["archived"][0]["rows"] == 4


def existing_partitions_of(db_url: str) -> set[str]:
    with psycopg.connect(libpq_url(db_url), autocommit=True) as c:
        return set(existing_partitions(c))
