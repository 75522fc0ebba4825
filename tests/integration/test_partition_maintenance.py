"""``hub partitions``: rollover, retention (archive → verify → detach concurrently → drop), the horizon, restore."""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
from typer.testing import CliRunner

from db import pg_tools
from db.connection import libpq_url
from db.partitions import archive as partition_archive
from db.partitions import retire
from db.partitions.rollover import Quarter, archived_quarters, existing_partitions
from db.settings.registry import get_settings_service
from flows import runtime
from flows.config import get_config
from flows.partitions import partition_maintenance, restore_partition_archive
from flows.snapshot import import_file
from tests.factories import order, write_jsonl

pytestmark = pytest.mark.integration

NOW = datetime(2026, 11, 30, 12, tzinfo=UTC)  # Q4 2026: runway 2026 Q4, 2027 Q1, 2027 Q2; horizon 2024-11-30
OLD = {"2020-02-10T10:00:00+0100": 3, "2021-05-03T12:00:00+0200": 2}  # past retention: 2020 Q1, 2021 Q2
RECENT = {"2026-08-01T09:00:00+0200": 2}  # 2026 Q3: a data quarter, not in the runway
RUNWAY = {"order_items_2026_q4", "order_items_2027_q1", "order_items_2027_q2"}


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


def q(db_url: str, sql: str, *args):
    with psycopg.connect(libpq_url(db_url), autocommit=True) as c:
        cur = c.execute(sql, args)
        return cur.fetchall() if cur.description else None


def shop_file(path: Path) -> Path:
    lines, n = [], 0
    for created, count in {**OLD, **RECENT}.items():
        for _ in range(count):
            n += 1
            lines.append(order(f"2000{n:04d}", created=created, changed=created, items=3))
    return write_jsonl(path, lines)


def items(db_url: str, where: str = "TRUE") -> list[tuple]:
    return q(
        db_url,
        f"SELECT order_code, item_id, created_at, name, amount, unit_price_with_vat FROM order_items WHERE {where} "
        "ORDER BY 1, 2",
    )


def test_rollover_creates_exactly_the_missing_quarters_and_is_idempotent(hub, db_url, tmp_path):
    import_file("orders", shop_file(tmp_path / "shop.jsonl.gz"))
    # An order header whose items never arrived: its quarter (2025 Q1) holds data and needs a partition.
    q(db_url, "INSERT INTO orders (code, created_at, content_hash) VALUES ('x1', '2025-02-01T00:00:00Z', 'x')")
    get_settings_service(db_url, "public").set("partition_retention_years", 0)
    before = existing_partitions_of(db_url)
    assert before == {"order_items_2020_q1", "order_items_2021_q2", "order_items_2026_q3"}

    out = partition_maintenance(now=NOW)
    assert sorted(out["created"]) == sorted(RUNWAY | {"order_items_2025_q1"})
    assert existing_partitions_of(db_url) == before | RUNWAY | {"order_items_2025_q1"}
    assert out["archived"] == []

    again = partition_maintenance(now=NOW)
    assert again["created"] == [] and again["archived"] == []
    assert again["plan"] == ["nothing to do"]


def test_dry_run_prints_the_plan_and_changes_nothing(hub, db_url, tmp_path):
    import_file("orders", shop_file(tmp_path / "shop.jsonl.gz"))
    before = existing_partitions_of(db_url)
    out = partition_maintenance(dry_run=True, now=NOW)
    assert any(line.startswith("create order_items_2026_q4") for line in out["plan"])
    assert any(line.startswith("archive, detach and drop order_items_2020_q1") for line in out["plan"])
    assert existing_partitions_of(db_url) == before
    assert not hub.exists()


def test_retention_archives_verifies_and_drops(hub, db_url, tmp_path):
    import_file("orders", shop_file(tmp_path / "shop.jsonl.gz"))
    old_items = items(db_url, "created_at < '2024-01-01'")
    assert len(old_items) == 15

    out = partition_maintenance(now=NOW)

    assert {a["partition"] for a in out["archived"]} == {"order_items_2020_q1", "order_items_2021_q2"}
    parts = existing_partitions_of(db_url)
    assert "order_items_2020_q1" not in parts and "order_items_2021_q2" not in parts
    assert {"order_items_2026_q3"} | RUNWAY <= parts
    assert items(db_url, "created_at < '2024-01-01'") == []
    assert q(db_url, "SELECT count(*) FROM orders")[0][0] == 7  # order headers stay
    with psycopg.connect(libpq_url(db_url)) as c:
        assert archived_quarters(c) == {(2020, 1), (2021, 2)}
    for a in out["archived"]:
        dump = Path(a["file"])
        assert dump.parent == hub
        assert dump.stat().st_mode & 0o777 == 0o600 and hub.stat().st_mode & 0o777 == 0o700
        assert partition_archive.manifest_path(dump).stat().st_mode & 0o777 == 0o600
        manifest = partition_archive.read_manifest(dump)
        assert manifest.sha256 == pg_tools.sha256_of(dump)
        assert manifest.rows == a["rows"] and manifest.sha256 == a["sha256"] and "pg_dump" in manifest.pg_dump_version
    rows = q(db_url, "SELECT partition, rows, dropped_at IS NOT NULL FROM partition_archives ORDER BY 1")
    assert rows == [("order_items_2020_q1", 9, True), ("order_items_2021_q2", 6, True)]
    # A second run has nothing left to retire and does not re-create the archived quarters.
    again = partition_maintenance(now=NOW)
    assert again["archived"] == [] and again["created"] == []


def test_a_corrupt_archive_blocks_the_drop(hub, db_url, tmp_path):
    import_file("orders", shop_file(tmp_path / "shop.jsonl.gz"))
    quarter = Quarter(2020, 1)
    with psycopg.connect(libpq_url(db_url), autocommit=True) as c:
        dump = partition_archive.archive_partition(c, db_url, "public", quarter, hub)
        data = bytearray(dump.read_bytes())
        data[len(data) // 2] ^= 0xFF
        dump.write_bytes(bytes(data))
        with pytest.raises(partition_archive.ArchiveDamaged, match="damaged: sha256"):
            retire.retire_partition(c, dump)
        assert quarter.name in existing_partitions(c)
        assert archived_quarters(c) == frozenset()
    assert len(items(db_url, "created_at < '2020-04-01'")) == 9
    assert q(db_url, "SELECT count(*) FROM partition_archives")[0][0] == 0


def test_a_truncated_archive_with_a_matching_checksum_fails_the_full_read(hub, db_url, tmp_path):
    import_file("orders", shop_file(tmp_path / "shop.jsonl.gz"))
    with psycopg.connect(libpq_url(db_url), autocommit=True) as c:
        dump = partition_archive.archive_partition(c, db_url, "public", Quarter(2020, 1), hub)
        dump.write_bytes(dump.read_bytes()[: dump.stat().st_size * 6 // 10])
        digest = pg_tools.sha256_of(dump)
        m = partition_archive.manifest_path(dump)
        m.write_text(m.read_text().replace(partition_archive.read_manifest(dump).sha256, digest))
        with pytest.raises(partition_archive.ArchiveDamaged, match="does not read to its end"):
            retire.retire_partition(c, dump)
        assert "order_items_2020_q1" in existing_partitions(c)


def test_a_restored_archive_returns_the_same_rows_and_lifts_the_horizon(hub, db_url, tmp_path):
    import_file("orders", shop_file(tmp_path / "shop.jsonl.gz"))
    before = items(db_url, "created_at < '2020-04-01'")
    out = partition_maintenance(now=NOW)
    dump = next(Path(a["file"]) for a in out["archived"] if a["partition"] == "order_items_2020_q1")

    restored = restore_partition_archive(dump)

    assert restored["rows"] == 9
    assert items(db_url, "created_at < '2020-04-01'") == before
    with psycopg.connect(libpq_url(db_url)) as c:
        assert archived_quarters(c) == {(2021, 2)}
        assert "order_items_2020_q1" in existing_partitions(c)


def test_a_restore_refuses_a_damaged_archive(hub, db_url, tmp_path):
    import_file("orders", shop_file(tmp_path / "shop.jsonl.gz"))
    out = partition_maintenance(now=NOW)
    dump = Path(out["archived"][0]["file"])
    dump.write_bytes(dump.read_bytes() + b"x")
    with pytest.raises(partition_archive.ArchiveDamaged):
        restore_partition_archive(dump)
    with psycopg.connect(libpq_url(db_url)) as c:
        assert archived_quarters(c) == {(2020, 1), (2021, 2)}


def test_a_full_snapshot_after_retention_does_not_resurrect_the_dropped_quarters(hub, db_url, tmp_path):
    shop = shop_file(tmp_path / "shop.jsonl.gz")
    import_file("orders", shop)
    partition_maintenance(now=NOW)

    counters = import_file("orders", shop, full=True)

    assert counters["beyond_retention"] == 5  # the five orders of the archived quarters
    assert counters["deleted"] == 0 and counters["rejected"] == 0
    parts = existing_partitions_of(db_url)
    assert "order_items_2020_q1" not in parts and "order_items_2021_q2" not in parts
    assert items(db_url, "created_at < '2024-01-01'") == []
    assert q(db_url, "SELECT count(*) FROM orders")[0][0] == 7
    assert len(items(db_url)) == 6  # the recent quarter's items are untouched


def test_cli_dry_run(hub, db_url, tmp_path, hub_env):
    from deployments.cli import app

    import_file("orders", shop_file(tmp_path / "shop.jsonl.gz"))
    res = CliRunner().invoke(app, ["partitions", "--dry-run"])
    assert res.exit_code == 0, res.output
    assert "dry run: archive, detach and drop order_items_2020_q1" in res.output
    assert "nothing was changed" in res.output


def test_the_dump_binary_matches_the_server(conn):
    major = pg_tools.server_major(conn)
    pg_dump = partition_archive.find_tool("pg_dump", major)
    out = subprocess.run([str(pg_dump), "--version"], capture_output=True, text=True, check=True).stdout
    assert f" {major}." in out


def existing_partitions_of(db_url: str) -> set[str]:
    with psycopg.connect(libpq_url(db_url)) as c:
        return existing_partitions(c)


def test_a_changed_order_of_an_archived_quarter_updates_its_header_only(hub, db_url, tmp_path):
    import_file("orders", shop_file(tmp_path / "shop.jsonl.gz"))
    partition_maintenance(now=NOW)
    changed = order("20000001", created="2020-02-10T10:00:00+0100", changed="2026-11-01T10:00:00+0100", items=4)
    counters = import_file("orders", write_jsonl(tmp_path / "changed.jsonl.gz", [changed]))
    assert counters["updated"] == 1 and counters["beyond_retention"] == 1 and counters["child_rows"] == 0
    assert q(db_url, "SELECT changed_at FROM orders WHERE code = '20000001'")[0][0] == datetime(
        2026, 11, 1, 9, tzinfo=UTC
    )
    assert items(db_url, "order_code = '20000001'") == []
    assert "order_items_2020_q1" not in existing_partitions_of(db_url)
