"""H1: every prune and sweep touches only names the hub writes, in every folder it cleans.

A backup folder may be a share's root or HUB_HOME itself; the copy dir may be shared by several hubs;
the archive folder may be the backup folder. Foreign files and folders there, however old, stay.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import psycopg
import pytest

from db.backups.manifest import list_backups
from db.connection import libpq_url
from db.dates import DateWindow
from db.partitions import archive as partition_archive
from db.partitions import rollover
from db.partitions.rollover import Quarter
from flows import runtime
from flows.backups import nightly_backup, prune_backups
from flows.config import get_config
from flows.locks import instance
from flows.partitions import partition_maintenance
from flows.snapshot_tasks import sweep_old_downloads

pytestmark = pytest.mark.integration

YEARS_AGO = time.time() - 3 * 365 * 86400
FOREIGN_FILES = (
    "other-team-db.sql.gz",
    "notes.txt.partial",
    "shop.dump",  # a dump, but not a name the hub gives
    "order_items_2023_q1-20230101T000000Z.dump.sha256",
    "their.dump.manifest.json",
    "shop-20200101T000000Z.dump.sha256",
)
FOREIGN_DIRS = ("photos", "pg", "archive", "run", "downloads", "shop-20200101T000000Z.dump")  # last: a folder


@pytest.fixture(scope="module", autouse=True)
def harness(prefect_harness):
    yield


def age(path: Path) -> None:
    for p in [path, *path.rglob("*")] if path.is_dir() else [path]:
        os.utime(p, (YEARS_AGO, YEARS_AGO), follow_symlinks=False)


def plant_foreign(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in FOREIGN_FILES:
        (folder / name).write_bytes(f"someone else's {name}".encode())
    for name in FOREIGN_DIRS:
        (folder / name).mkdir()
        (folder / name / "keep.bin").write_bytes(b"theirs")
        (folder / name / "old.dump.partial").write_bytes(b"theirs too")
    for p in folder.iterdir():
        age(p)


def snapshot(folders: list[Path]) -> dict[str, bytes]:
    """Every foreign file under the folders, with its bytes."""
    out = {}
    for folder in folders:
        for name in FOREIGN_FILES:
            out[str(folder / name)] = (folder / name).read_bytes()
        for name in FOREIGN_DIRS:
            for f in sorted((folder / name).rglob("*")):
                out[str(f)] = f.read_bytes()
    return out


def plant_own(path: Path, *, folder: bool = False) -> Path:
    """A leftover of a killed hub run, a day and more old: the sweep must remove it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if folder:
        path.mkdir()
        (path / "toc.dat").write_bytes(b"partial")
    else:
        path.write_bytes(b"partial")
    age(path)
    return path


def test_every_prune_and_sweep_leaves_foreign_files_and_folders_alone(db_url, tmp_path, monkeypatch, no_retry_waits):
    home, share, archive_dir, downloads = tmp_path / "home", tmp_path / "share", tmp_path / "arch", tmp_path / "dl"
    # HUB_BACKUP_DIR = HUB_HOME (the review's scenario 3), and the archives in the backup folder too (scenario 2).
    for var, value in {"HUB_HOME": home, "HUB_BACKUP_DIR": home, "HUB_BACKUP_COPY_DIR": share,
                       "HUB_ARCHIVE_DIR": archive_dir, "HUB_DOWNLOAD_DIR": downloads}.items():  # fmt: skip
        monkeypatch.setenv(var, str(value))
    monkeypatch.setenv("HUB_DATABASE_URL", db_url)
    get_config.cache_clear()
    mine = share / f"hub-{instance(db_url, 'public')}"
    folders = [home, share, mine, archive_dir, downloads]
    for folder in folders:
        plant_foreign(folder)
    before = snapshot(folders)
    own = [
        plant_own(home / "shop-20200101T000000Z.dump.partial"),
        plant_own(home / "shop-20200101T000000Z-2.dir.partial", folder=True),
        plant_own(home / "shop-20200101T000000Z-3.dump.manifest.json.0123abcd4567.partial"),
        plant_own(mine / "shop-20200101T000000Z.dump.partial"),
        plant_own(archive_dir / "order_items_2020_q1-20200101T000000Z.archive.partial"),
        plant_own(archive_dir / "order_items_2020_q1-20200101T000000Z.archive.json.0123abcd4567.partial"),
        plant_own(downloads / "shoptet-abc123-def456.part"),
    ]
    with runtime.override(database_url=db_url):
        out = nightly_backup()  # a real backup, verified, copied into this hub's own subfolder of the share
        q = Quarter(2020, 1)
        with psycopg.connect(libpq_url(db_url), autocommit=True) as c:
            rollover.ensure_partitions(c, [q], window=DateWindow(q.start, q.last_moment))
            real_archive = partition_archive.archive_partition(c, db_url, "public", q, home)
        prune_backups()
        partition_maintenance()
        sweep_old_downloads()

    assert snapshot(folders) == before  # every foreign file and folder, byte for byte
    assert [p for p in own if p.exists()] == []  # while the hub's own leftovers were swept
    assert Path(out["copied_to"]).parent == mine and not (share / Path(out["backup"]).name).exists()
    assert [p for p, _ in list_backups(home)] == [Path(out["backup"])]
    assert real_archive.exists() and partition_archive.manifest_path(real_archive).exists()
    get_config.cache_clear()
