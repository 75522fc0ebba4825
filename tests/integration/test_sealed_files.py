"""The sealed-file stack (db/sealed): names, durable writes, manifests; backups and archives alike."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest

from db import pg_tools
from db.backups.manifest import manifest_path as backup_manifest_path
from db.backups.manifest import write_manifest
from db.connection import libpq_url
from db.dates import DateWindow
from db.partitions import archive as partition_archive
from db.partitions import rollover
from db.partitions.rollover import Quarter
from db.sealed import ARCHIVE, BACKUP, files
from flows import runtime
from flows.config import get_config
from flows.locks import instance
from flows.partitions import partition_maintenance, restore_partition_archive
from flows.snapshot import import_file
from tests.integration.test_partition_maintenance import NOW, shop_file

pytestmark = pytest.mark.integration

Q = Quarter(2020, 1)


def make_quarter(conn) -> None:
    rollover.ensure_partitions(conn, [Q], window=DateWindow(Q.start, Q.last_moment))


@pytest.fixture
def fsyncs(monkeypatch) -> list[str]:
    """The path of every file and folder os.fsync is called on."""
    seen: list[str] = []
    real = os.fsync

    def spy(fd: int) -> None:
        seen.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    return seen


def test_archives_are_0600_fsynced_renamed_durably_and_unique_within_a_second(conn, db_url, tmp_path, fsyncs):
    make_quarter(conn)
    folder = tmp_path / "archive"
    url = db_url
    first = partition_archive.archive_partition(conn, url, "public", Q, folder)
    second = partition_archive.archive_partition(conn, url, "public", Q, folder)  # usually the same second
    assert first != second and first.exists() and second.exists()
    assert ARCHIVE.owns(first.name) and not BACKUP.owns(first.name)
    for dump in (first, second):
        manifest = partition_archive.manifest_path(dump)
        assert manifest.name == dump.name + ".json" and not manifest.name.endswith(".manifest.json")
        assert dump.stat().st_mode & 0o777 == 0o600 and manifest.stat().st_mode & 0o777 == 0o600
        assert str(dump) + ".partial" in fsyncs  # the data is on disk before the rename…
        assert partition_archive.read_manifest(dump).file == dump.name
    assert folder.stat().st_mode & 0o777 == 0o700
    assert fsyncs.count(str(folder)) >= 4  # …and each rename (dump, manifest) is made durable by the folder's fsync
    assert not list(folder.glob("*.partial"))


def test_manifest_writes_never_share_a_temporary_name(tmp_path, monkeypatch):
    """Two writers of one manifest (verify next to a test restore) must not write into one temp file."""
    from db.backups.manifest import Manifest

    backup = tmp_path / "shop-20261130T120000Z.dump"
    backup.write_bytes(b"x")
    m = Manifest("x", "custom", "shop", "public", "18.1", "t", "t", 1, "0", "pg_dump 18.1")
    temps: list[str] = []
    real = os.replace
    monkeypatch.setattr(os, "replace", lambda a, b: (temps.append(Path(a).name), real(a, b))[1])
    write_manifest(backup, m)
    write_manifest(backup, m)
    assert len(temps) == 2 and temps[0] != temps[1]
    assert all(BACKUP.owns_temp(t) for t in temps)
    assert backup_manifest_path(backup).stat().st_mode & 0o777 == 0o600


def test_names_are_the_hubs_own_and_unique_within_a_second(tmp_path):
    when = datetime(2026, 11, 30, 12, tzinfo=UTC)
    a = BACKUP.new_path(tmp_path, "shop", when, ".dump")
    assert a.name == "shop-20261130T120000Z.dump"
    a.write_bytes(b"")
    b = BACKUP.new_path(tmp_path, "shop", when, ".dump")
    assert b.name == "shop-20261130T120000Z-2.dump"
    files.prepare_temp(b)  # a temp under that name reserves it too
    assert BACKUP.new_path(tmp_path, "shop", when, ".dump").name == "shop-20261130T120000Z-3.dump"
    assert BACKUP.new_path(tmp_path, "a/../b c", when, ".dir").name == "a____b_c-20261130T120000Z.dir"
    for foreign in ("other-team-db.sql.gz", "photos", "pg", "archive", "run", "downloads", "shop.dump",
                    "shop-20261130T120000Z.dump.sha256", "x-20261130T120000Z.archive.manifest.json"):  # fmt: skip
        assert not any(k.owns(foreign) or k.owns_temp(foreign) or k.owns_manifest(foreign) for k in (BACKUP, ARCHIVE))
    assert BACKUP.owns_manifest("shop-20261130T120000Z-2.dump.manifest.json")
    assert ARCHIVE.owns_manifest("order_items_2020_q1-20261130T120000Z.archive.json")
    assert BACKUP.owns_temp("shop-20261130T120000Z.dir.partial") and BACKUP.may_be_folder("shop-20261130T120000Z.dir")
    assert not ARCHIVE.may_be_folder("order_items_2020_q1-20261130T120000Z.archive")


@pytest.fixture
def retention_hub(db_url, tmp_path, monkeypatch, no_retry_waits, prefect_harness):
    """partition-maintenance on this test's database, archives in tmp/archive, the copy dir tmp/share."""
    monkeypatch.setenv("HUB_ARCHIVE_DIR", str(tmp_path / "archive"))
    monkeypatch.setenv("HUB_BACKUP_COPY_DIR", str(tmp_path / "share"))
    get_config.cache_clear()
    with runtime.override(database_url=db_url):
        import_file("orders", shop_file(tmp_path / "shop.jsonl.gz"))
        yield tmp_path / "share" / f"hub-{instance(db_url, 'public')}"
    get_config.cache_clear()


def test_archives_are_copied_off_the_machine_and_checked_there(retention_hub, db_url):
    out = partition_maintenance(now=NOW)
    assert {a["partition"] for a in out["archived"]} == {"order_items_2020_q1", "order_items_2021_q2"}
    for a in out["archived"]:
        local, copy = Path(a["file"]), Path(a["copied_to"])
        assert copy.parent == retention_hub and copy.name == local.name
        assert pg_tools.sha256_of(copy) == a["sha256"] == partition_archive.read_manifest(copy).sha256
        assert copy.stat().st_mode & 0o777 == 0o600 and partition_archive.manifest_path(copy).exists()
        partition_archive.verify_archive(copy, _major(db_url))  # and it reads to its end there


def test_a_copy_that_arrives_damaged_stops_the_drop(retention_hub, db_url, monkeypatch):
    import db.sealed.copy as sealed_copy

    def damaging_copy(src, dst):
        Path(dst).write_bytes(Path(src).read_bytes()[:-10])

    monkeypatch.setattr(sealed_copy.shutil, "copyfile", damaging_copy)
    with pytest.raises(partition_archive.ArchiveDamaged, match="the copy of order_items_2020_q1.*was not dropped"):
        partition_maintenance(now=NOW)
    with psycopg.connect(libpq_url(db_url)) as c:
        assert "order_items_2020_q1" in rollover.existing_partitions(c)
        assert rollover.archived_quarters(c) == frozenset()
    assert not list(retention_hub.glob("*.archive"))  # the damaged copy was removed, not left looking whole


def _major(db_url: str) -> int:
    with psycopg.connect(libpq_url(db_url)) as c:
        return pg_tools.server_major(c)


def test_an_archive_restores_only_from_the_archive_dir_with_its_recorded_sha256(retention_hub, db_url, tmp_path):
    """M8: restore-partition-archive.path stays in HUB_ARCHIVE_DIR; the hub's own record decides, not a sidecar."""
    out = partition_maintenance(now=NOW)
    dump = next(Path(a["file"]) for a in out["archived"] if a["partition"] == "order_items_2020_q1")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for f in (dump, partition_archive.manifest_path(dump)):
        (elsewhere / f.name).write_bytes(f.read_bytes())
    for given in (elsewhere / dump.name, Path("../elsewhere") / dump.name):
        with pytest.raises(partition_archive.ArchiveError, match="is outside"):
            restore_partition_archive(given)
    # Inside the folder, a crafted dump (here: another quarter's rows) with a manifest rewritten to match it.
    with psycopg.connect(libpq_url(db_url), autocommit=True) as c:
        other = partition_archive.archive_partition(c, db_url, "public", Quarter(2026, 3), dump.parent)
    manifest = partition_archive.manifest_path(dump)
    crafted = manifest.read_text().replace(partition_archive.read_manifest(dump).sha256, pg_tools.sha256_of(other))
    dump.write_bytes(other.read_bytes())
    manifest.write_text(crafted)
    partition_archive.verify_archive(dump, _major(db_url))  # checksum and full read pass: the sidecar says so
    with pytest.raises(partition_archive.ArchiveError, match="not an archive this hub recorded"):
        restore_partition_archive(dump.name)
    with psycopg.connect(libpq_url(db_url)) as c:
        assert rollover.archived_quarters(c) == {(2020, 1), (2021, 2)}  # the horizon was not lifted
