"""Backups: dump → verify → restore equals the source; damage is caught; retention; DDL locks; CLI.

Runs on the embedded PostgreSQL 18 and, with HUB_TEST_DATABASE_URL, on a PostgreSQL 15 server: the
pg_dump/pg_restore of the server's own major version is found for each.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import psycopg.conninfo
import pytest
from psycopg import sql
from typer.testing import CliRunner

from db import pg_tools
from db.backups import dump, newest_restore_tested, newest_verified, retention
from db.backups.manifest import BackupError, list_backups, manifest_path, read_manifest, write_manifest
from db.connection import libpq_url, with_database
from db.sealed import BACKUP
from deployments.cli import app
from flows import backups as backup_flows
from flows import runtime
from flows.config import get_config
from flows.locks import instance
from flows.snapshot import import_file
from tests.factories import order, write_jsonl

pytestmark = pytest.mark.integration

CREATED = ["2026-08-01T09:00:00+0200", "2026-10-02T10:00:00+0200"]  # two order_items partitions


@pytest.fixture(scope="module", autouse=True)
def harness(prefect_harness):
    yield


@pytest.fixture
def hub(db_url, tmp_path, monkeypatch, no_retry_waits):
    """The flows and the CLI on this test's database, backups in tmp_path/backups."""
    monkeypatch.setenv("HUB_BACKUP_DIR", str(tmp_path / "backups"))
    monkeypatch.setenv("HUB_DATABASE_URL", db_url)
    get_config.cache_clear()
    with runtime.override(database_url=db_url):
        yield tmp_path / "backups"
    get_config.cache_clear()


@pytest.fixture
def target_db(db_url):
    """A database name for `hub restore`, dropped after the test."""
    name = f"hub_r_{os.getpid()}_{time.monotonic_ns() % 10**8}"
    yield name
    with psycopg.connect(libpq_url(with_database(db_url, "postgres")), autocommit=True) as c:
        c.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def shop(db_url: str, tmp_path: Path) -> None:
    lines = [order(f"3000{n:04d}", created=CREATED[n % 2], changed=CREATED[n % 2], items=3) for n in range(12)]
    import_file("orders", write_jsonl(tmp_path / "shop.jsonl.gz", lines))


def fingerprint(url: str) -> dict:
    """Row counts of the main tables and a checksum of a sample of order_items rows."""
    with psycopg.connect(libpq_url(url)) as c:
        counts = {t: c.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(t))).fetchone()[0]
                  for t in dump.MAIN_TABLES}  # fmt: skip
        sample = c.execute(
            "SELECT md5(string_agg(t::text, '|' ORDER BY order_code, item_id)) FROM "
            "(SELECT * FROM order_items ORDER BY order_code, item_id LIMIT 20) t"
        ).fetchone()[0]
    return {"counts": counts, "sample": sample}


def cli(*args: str):
    return CliRunner().invoke(app, list(args))


def said(res) -> str:
    """The command's output on one line: rich wraps long error messages at the terminal width."""
    return " ".join(res.output.split())


def test_backup_verify_restore_equals_the_source(hub, db_url, tmp_path, target_db, monkeypatch):
    shop(db_url, tmp_path)
    monkeypatch.setenv("HUB_BACKUP_COPY_DIR", str(tmp_path / "share"))
    get_config.cache_clear()
    source = fingerprint(db_url)
    assert source["counts"]["order_items"] == 36 and source["sample"]

    res = cli("backup")
    assert res.exit_code == 0, res.output
    [(path, m)] = list_backups(hub)
    assert m.verified is True and m.verify_error is None
    assert m.row_counts["orders"] == 12 and m.row_counts["order_items"] == 36
    assert len(m.partitions) == 2 and m.sha256 == pg_tools.sha256_of(path) and m.size_bytes == path.stat().st_size
    assert m.pg_dump_version.split()[-1].split(".")[0] == m.server_version.split(".")[0]
    assert path.stat().st_mode & 0o777 == 0o600 and manifest_path(path).stat().st_mode & 0o777 == 0o600
    assert not list(hub.glob("*.partial"))
    copied = tmp_path / "share" / f"hub-{instance(db_url, 'public')}" / path.name  # this hub's own subfolder
    assert pg_tools.sha256_of(copied) == m.sha256 and copied.stat().st_mode & 0o777 == 0o600

    res = cli("restore", path.name, "--target-db", target_db)
    assert res.exit_code == 0, res.output
    assert fingerprint(with_database(db_url, target_db)) == source

    res = cli("restore", path.name, "--target-db", target_db)  # now it holds the tables
    assert res.exit_code == 1 and "not empty" in said(res) and "--force" in said(res)
    own = psycopg.conninfo.conninfo_to_dict(libpq_url(db_url))["dbname"]
    res = cli("restore", path.name, "--target-db", own, "--force")
    assert res.exit_code == 1 and "the database this hub is using" in said(res)
    res = cli("restore", str(path), "--target-db", target_db, "--force")  # it holds a hub now: a second flag
    assert res.exit_code == 1 and "--replace-hub-database" in said(res)
    res = cli("restore", str(path), "--target-db", target_db, "--force", "--replace-hub-database")
    assert res.exit_code == 0, res.output
    assert "dropped the previous" in said(res)
    assert fingerprint(with_database(db_url, target_db)) == source

    res = cli("backups", "test-restore")
    assert res.exit_code == 0, res.output
    m = read_manifest(path)
    assert m.restore_tested is True and m.restore_seconds > 0
    assert newest_verified(hub) == newest_restore_tested(hub) == m.finished
    assert "yes" in cli("backups", "list").output


def test_a_failed_test_restore_fails_loudly_and_drops_its_scratch_database(hub, db_url, tmp_path):
    shop(db_url, tmp_path)
    path, m = dump.take_backup(db_url, "public", hub)
    m.verified = True
    m.row_counts["orders"] += 1  # the restore will hold one order fewer than the manifest says
    write_manifest(path, m)
    with pytest.raises(BackupError, match="orders: 12 rows restored, 13 in the backup"):
        backup_flows.test_restore()
    assert read_manifest(path).restore_tested is False
    with psycopg.connect(libpq_url(db_url)) as c:
        left = c.execute("SELECT count(*) FROM pg_database WHERE datname LIKE 'hub\\_restore\\_test\\_%'").fetchone()
    assert left[0] == 0


def test_a_truncated_and_a_flipped_byte_backup_are_caught_by_verify(hub, db_url, tmp_path):
    shop(db_url, tmp_path)
    path, m = dump.take_backup(db_url, "public", hub)
    assert cli("backups", "verify", path.name).exit_code == 0

    data = path.read_bytes()
    truncated = hub / "truncated-20261130T120000Z.dump"
    truncated.write_bytes(data[:-256])  # the data blocks are at the end, the table of contents at the front
    # Its manifest matches the truncated file: only the full read can catch it (`--list` does not).
    write_manifest(truncated, replace(m, sha256=pg_tools.sha256_of(truncated)))
    restore_bin = pg_tools.find_tool("pg_restore", m.server_major)
    assert subprocess.run([str(restore_bin), "--list", str(truncated)], capture_output=True).returncode == 0
    res = cli("backups", "verify", str(truncated))
    assert res.exit_code == 1 and "does not read to its end" in said(res)
    assert read_manifest(truncated).verified is False

    flipped = hub / "flipped-20261130T120000Z.dump"
    raw = bytearray(data)
    raw[len(raw) // 2] ^= 0x01
    flipped.write_bytes(bytes(raw))
    write_manifest(flipped, m)
    res = cli("backups", "verify", str(flipped))
    assert res.exit_code == 1 and "damaged: sha256" in said(res)


NAMES: dict[str, Path] = {}  # a fake backup's label (a.dump) → its file, named as the hub names backups


def fake_backup(
    directory: Path,
    label: str,
    age_days: float,
    verified: bool | None,
    now: datetime,
    size: int = 1024,
    *,
    database: str = "shop",
    schema: str = "public",
    restore_tested: bool | None = None,
) -> Path:
    """A backup file with a manifest dated ``age_days`` ago (retention reads the manifest's date)."""
    directory.mkdir(parents=True, exist_ok=True)
    finished = now - timedelta(days=age_days)
    path = BACKUP.new_path(directory, database, finished, ".dump")
    NAMES[label] = path
    path.write_bytes(b"x" * size)
    when = finished.isoformat()
    m = {"file": path.name, "format": "custom", "database": database, "schema": schema, "server_version": "18.1",
         "started_at": when, "finished_at": when, "size_bytes": size, "sha256": "0", "pg_dump_version": "18.1",
         "verified": verified, "restore_tested": restore_tested}  # fmt: skip
    manifest_path(path).write_text(json.dumps(m))
    return path


def by_label(decisions) -> dict:
    names = {p.name: label for label, p in NAMES.items()}
    return {names.get(x.path.name, x.path.name): x for x in decisions}


def test_retention_keeps_the_newest_verified_even_when_all_are_old(tmp_path):
    now = datetime(2026, 11, 30, 12, tzinfo=UTC)
    d = tmp_path / "only-old"
    last_verified = fake_backup(d, "a.dump", 90, True, now)
    fake_backup(d, "b.dump", 60, False, now)
    fake_backup(d, "c.dump", 45, None, now)
    decisions = by_label(retention.prune(d, now=now))
    assert not decisions["a.dump"].remove and "newest verified" in decisions["a.dump"].reason
    assert decisions["b.dump"].remove and decisions["c.dump"].remove
    assert last_verified.exists() and not NAMES["b.dump"].exists() and not manifest_path(NAMES["c.dump"]).exists()

    d = tmp_path / "many"
    for i in range(10):  # 40..49 days old, all verified: only the newest 7 stay
        fake_backup(d, f"v{i}.dump", 40 + i, True, now)
    fake_backup(d, "young.dump", 3, False, now)
    kept = {label for label, x in by_label(retention.prune(d, now=now)).items() if not x.remove}
    assert kept == {f"v{i}.dump" for i in range(7)} | {"young.dump"}

    d = tmp_path / "none-verified"
    fake_backup(d, "u.dump", 100, False, now)
    assert not any(x.remove for x in retention.prune(d, now=now)) and NAMES["u.dump"].exists()


def test_prune_dry_run_says_what_and_how_much_then_prune_removes_it(hub):
    now = datetime.now(UTC)
    fake_backup(hub, "old-verified.dump", 50, True, now, size=3 * 2**20)
    fake_backup(hub, "new-verified.dump", 1, True, now)
    for i in range(6):  # with new-verified: the newest 7 verified, although 31..36 days old
        fake_backup(hub, f"older{i}.dump", 31 + i, True, now)
    leftover = hub / "shop-20261101T020000Z.dump.partial"
    leftover.write_bytes(b"y" * 2048)
    os.utime(leftover, (time.time() - 2 * 86400,) * 2)

    res = cli("backups", "prune", "--dry-run")
    assert res.exit_code == 0, res.output
    assert "dry run: would remove 2 backup(s), 3.0 MB" in said(res)  # old-verified.dump and the leftover
    assert NAMES["old-verified.dump"].exists() and leftover.exists()
    res = cli("backups", "prune")
    assert res.exit_code == 0, res.output
    assert "removed 2 backup(s)" in said(res)
    assert not NAMES["old-verified.dump"].exists() and not leftover.exists()
    assert len(list_backups(hub)) == 7


@pytest.mark.parametrize("table", ["settings", "orders"])  # pg_dump's own LOCK TABLE; also the row counts'
def test_a_backup_behind_a_ddl_lock_fails_fast_with_a_clear_message(hub, db_url, table):
    with psycopg.connect(libpq_url(db_url)) as ddl:
        # uncommitted DDL: its ACCESS EXCLUSIVE lock is held until the rollback
        ddl.execute(sql.SQL("ALTER TABLE {} ADD COLUMN backup_test_col int").format(sql.Identifier(table)))
        t0 = time.monotonic()
        res = cli("backup", "--lock-wait-timeout", "1s")
        elapsed = time.monotonic() - t0
        ddl.rollback()
    assert res.exit_code == 1, res.output
    assert "did not get its table locks within 1 s (--lock-wait-timeout)" in said(res)
    assert "Nothing was written" in said(res)
    assert elapsed < 20
    assert not hub.exists() or not any(hub.iterdir())


def test_tools_and_password_handling(conn):
    major = pg_tools.server_major(conn)
    assert pg_tools.tool_major(pg_tools.find_tool("pg_restore", major)) == major
    with pytest.raises(pg_tools.ToolMissing, match="no pg_dump of PostgreSQL 9 .*postgresql-client-9"):
        pg_tools.find_tool("pg_dump", 9)
    with pg_tools.libpq_env("postgresql://hub:s3cret@db.example:5432/shop?sslpassword=kp") as (conninfo, env):
        service = Path(env["PGSERVICEFILE"])
        assert conninfo == "service=hub" and "s3cret" not in str(env) and "kp" not in str(env)
        assert "password=s3cret\n" in service.read_text() and "sslpassword=kp\n" in service.read_text()
    assert not service.exists() and not service.parent.exists()


def test_a_parallel_directory_backup_verifies_and_a_damaged_data_file_is_caught(hub, db_url, tmp_path):
    shop(db_url, tmp_path)
    path, m = dump.take_backup(db_url, "public", hub, fmt="directory", jobs=2)
    again, _ = dump.take_backup(db_url, "public", hub, fmt="directory")  # usually the same second: never the same name
    assert again != path and {p for p, _ in list_backups(hub)} == {path, again}
    assert path.is_dir() and path.stat().st_mode & 0o777 == 0o700
    assert all(f.stat().st_mode & 0o777 == 0o600 for f in path.iterdir())
    assert cli("backups", "verify", str(path)).exit_code == 0
    biggest = max(path.glob("*.dat*"), key=lambda f: f.stat().st_size)
    biggest.write_bytes(biggest.read_bytes()[:-16])
    res = cli("backups", "verify", str(path))
    assert res.exit_code == 1 and "damaged: sha256" in said(res)
    with pytest.raises(ValueError, match="directory format"):
        dump.take_backup(db_url, "public", hub, fmt="custom", jobs=2)


def test_retention_keeps_the_newest_restore_tested_backup(tmp_path):
    """The review's probe: 29 nightlies verified but failing their test restore; the one that restored stays."""
    now = datetime(2026, 11, 30, 12, tzinfo=UTC)
    d = tmp_path / "b"
    for i in range(29):
        fake_backup(d, f"n{i}.dump", i + 0.5, True, now, restore_tested=False)
    fake_backup(d, "b35.dump", 35, True, now, restore_tested=True)
    fake_backup(d, "b40.dump", 40, True, now, restore_tested=True)  # an older one that restored: not needed
    decisions = by_label(retention.prune(d, now=now))
    assert not decisions["b35.dump"].remove and "newest restore-tested" in decisions["b35.dump"].reason
    assert NAMES["b35.dump"].exists() and decisions["b40.dump"].remove


def test_retention_never_mixes_databases(tmp_path):
    """Another hub's fresh verified backups in a shared folder do not push this hub's out."""
    now = datetime(2026, 11, 30, 12, tzinfo=UTC)
    d = tmp_path / "shared"
    for i in range(10):
        fake_backup(d, f"other{i}.dump", i + 0.5, True, now, database="other_hub")
    for i in range(8):  # this hub's nightlies failed for over a month: its last 8 are 40..47 days old
        fake_backup(d, f"mine{i}.dump", 40 + i, True, now)
    fake_backup(d, "other-schema.dump", 60, True, now, schema="shop2")  # same database, another hub's schema
    decisions = by_label(retention.prune(d, now=now))
    kept = {label for label, x in decisions.items() if not x.remove}
    assert kept == {f"mine{i}.dump" for i in range(7)} | {f"other{i}.dump" for i in range(10)} | {"other-schema.dump"}
    assert "of shop (shop2)" in decisions["other-schema.dump"].reason
    assert decisions["mine7.dump"].remove and decisions["mine7.dump"].database == "shop"


def test_the_test_restore_picks_this_databases_newest_backup_not_another_hubs(hub, db_url, tmp_path):
    shop(db_url, tmp_path)
    path, _ = dump.take_backup(db_url, "public", hub)
    backup_flows.verify_backup.fn(path)
    # A newer, verified backup of another hub's database in the same folder (a shared HUB_BACKUP_DIR).
    fake_backup(hub, "theirs.dump", -1, True, datetime.now(UTC), database="another_hub")
    own = dump.current_database(db_url)
    assert backup_flows.newest_verified_backup(hub, own, "public") == path
    m = backup_flows.test_restore()
    assert m.file == path.name and m.restore_tested is True
    assert read_manifest(NAMES["theirs.dump"]).restore_tested is None


def test_restores_take_only_verified_hub_backups_inside_the_backup_dir(hub, db_url, tmp_path, target_db):
    """M8: a restore runs the file's SQL; a path parameter must not hand pg_restore any file the worker can read."""
    shop(db_url, tmp_path)
    path, _ = dump.take_backup(db_url, "public", hub)
    backup_flows.verify_backup.fn(path)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    for f in (path, manifest_path(path)):  # a crafted dump with a manifest that says verified, outside the folder
        (outside / f.name).write_bytes(f.read_bytes())
    (hub / "link-20261130T120000Z.dump").symlink_to(outside / path.name)
    (hub / "link-20261130T120000Z.dump.manifest.json").symlink_to(outside / manifest_path(path).name)
    for given in (str(outside / path.name), f"../elsewhere/{path.name}", "link-20261130T120000Z.dump"):
        res = cli("restore", given, "--target-db", target_db)
        assert res.exit_code == 1 and "is outside" in said(res), (given, res.output)
        with pytest.raises(BackupError, match="is outside"):
            backup_flows.test_restore(backup=given)
    foreign = hub / "crafted.dump"  # inside the folder, but not a name the hub gives its backups
    foreign.write_bytes(path.read_bytes())
    manifest_path(foreign).write_bytes(manifest_path(path).read_bytes())
    res = cli("restore", "crafted.dump", "--target-db", target_db)
    assert res.exit_code == 1 and "not a backup the hub wrote" in said(res)

    unverified, _ = dump.take_backup(db_url, "public", hub)  # dumped, never read back
    res = cli("restore", unverified.name, "--target-db", target_db)
    assert res.exit_code == 1 and "has not been verified: refusing to restore it" in said(res)
    with pytest.raises(BackupError, match="has not been verified"):
        backup_flows.test_restore(backup=unverified.name)
    with psycopg.connect(libpq_url(with_database(db_url, "postgres"))) as c:
        assert c.execute("SELECT count(*) FROM pg_database WHERE datname = %s", (target_db,)).fetchone()[0] == 0

    res = cli("restore", path.name, "--target-db", target_db)  # the verified hub backup, by name: restored
    assert res.exit_code == 0, res.output


def sealed_fake(hub: Path, verified: bool | None = True) -> Path:
    """A hub-named backup file whose manifest's sha256 matches it (full reads are stubbed where it is used)."""
    path = fake_backup(hub, "sealed.dump", 0.1, verified, datetime.now(UTC))
    m = read_manifest(path)
    m.sha256 = pg_tools.sha256_of(path)
    write_manifest(path, m)
    return path


def test_a_verification_keeps_what_a_test_restore_recorded_meanwhile(tmp_path, monkeypatch):
    """L12: each step re-reads the manifest before it writes, so one outcome never overwrites the other."""
    from db.backups import verify

    path = sealed_fake(tmp_path)

    def full_read_while_a_test_restore_finishes(backup, manifest):
        m = read_manifest(backup)
        m.restore_tested, m.restore_seconds = True, 12.5
        write_manifest(backup, m)

    monkeypatch.setattr(verify, "full_read", full_read_while_a_test_restore_finishes)
    verify.verify_backup(path)
    m = read_manifest(path)
    assert m.verified is True and m.restore_tested is True and m.restore_seconds == 12.5


def test_a_test_restore_keeps_what_a_verification_recorded_meanwhile(db_url, tmp_path, monkeypatch):
    from db.backups import restore

    path = sealed_fake(tmp_path)

    def pg_restore_while_a_verification_finishes(url, target, backup, manifest, jobs):
        m = read_manifest(backup)
        m.verified_at = "2026-12-01T00:00:00+00:00"
        write_manifest(backup, m)

    monkeypatch.setattr(restore, "_pg_restore", pg_restore_while_a_verification_finishes)
    monkeypatch.setattr(restore, "check_restored", lambda url, target, manifest: [])
    restore.test_restore(db_url, path)
    m = read_manifest(path)
    assert m.restore_tested is True and m.verified_at == "2026-12-01T00:00:00+00:00"


def test_hub_backups_verify_takes_the_db_maintenance_lock(hub, db_url):
    from flows.locks import job_lock

    path = sealed_fake(hub)
    with job_lock("db-maintenance", url=db_url, schema="public"):
        res = cli("backups", "verify", path.name)
    assert res.exit_code == 75 and "db-maintenance" in said(res) and "held" in said(res), res.output
    assert read_manifest(path).verified_at is None  # it did not run


def scratch_dbs(db_url: str) -> set[str]:
    with psycopg.connect(libpq_url(with_database(db_url, "postgres"))) as c:
        rows = c.execute("SELECT datname FROM pg_database WHERE datname LIKE 'hub\\_restore\\_test%'").fetchall()
    return {r[0] for r in rows}


def test_scratch_databases_a_killed_test_restore_left_are_dropped_first_and_only_those(hub, db_url, tmp_path):
    """L14: under the lock, the next test restore drops this hub's leftover scratch databases, nothing else."""
    from db.backups import scratch

    shop(db_url, tmp_path)
    path, _ = dump.take_backup(db_url, "public", hub)
    backup_flows.verify_backup.fn(path)
    mine = scratch.scratch_name(instance(db_url, "public"))
    names = {"mine": mine, "old_unused": "hub_restore_test_0123456789", "old_in_use": "hub_restore_test_abcdef0123",
             "another_hub": "hub_restore_test_ffffffff_0123456789", "not_scratch": "hub_restore_testing"}  # fmt: skip
    admin = psycopg.connect(libpq_url(with_database(db_url, "postgres")), autocommit=True)
    try:
        for name in names.values():
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        with psycopg.connect(libpq_url(with_database(db_url, names["old_in_use"]))):  # a live session uses it
            m = backup_flows.test_restore()
        assert m.restore_tested is True
        left = scratch_dbs(db_url)
        assert names["mine"] not in left and names["old_unused"] not in left
        assert {names["old_in_use"], names["another_hub"], names["not_scratch"]} <= left
    finally:
        for name in names.values():
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        admin.close()


def test_no_dump_and_no_scratch_restore_without_room_on_the_disk(hub, db_url, tmp_path):
    """L14: a full disk would stop the live cluster (same disk as its WAL on the embedded setup)."""
    from db.backups import restore

    shop(db_url, tmp_path)
    with pytest.raises(
        BackupError,
        match=r"not enough free disk for the backup in .*: needs about \d+ MB \+ 953674316 MB reserve, \d+ MB free",
    ):  # noqa: E501
        dump.take_backup(db_url, "public", hub, reserve_bytes=10**15)
    assert not hub.exists() or not list(hub.iterdir())  # nothing was written
    path, _ = dump.take_backup(db_url, "public", hub)
    backup_flows.verify_backup.fn(path)
    before = scratch_dbs(db_url)
    with pytest.raises(BackupError, match=r"not enough free disk for a scratch restore of .*: needs about \d+ MB"):
        restore.test_restore(db_url, path, reserve_bytes=10**15)
    assert scratch_dbs(db_url) == before
