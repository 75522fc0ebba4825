"""Alembic migrations: serialized by an advisory lock, reversible, partitions invisible to autogenerate."""

from __future__ import annotations

import subprocess
import sys

import psycopg
import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from db.connection import libpq_url, sqlalchemy_url
from db.dates import DateWindow
from db.migrate import (
    MIGRATIONS,
    current_revision,
    current_revisions,
    downgrade,
    head_revision,
    head_revisions,
    is_up_to_date,
    upgrade,
)
from db.partitions.rollover import Quarter, ensure_partitions
from models.autogenerate import PARTITION, include_object
from models.tables import metadata

pytestmark = pytest.mark.integration


def test_two_processes_migrating_at_once_are_serialized(empty_db_url):
    code = "import sys; from db.migrate import upgrade; upgrade(sys.argv[1], 'hub')"
    procs = [
        subprocess.Popen([sys.executable, "-c", code, empty_db_url], stderr=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], errors
    assert current_revision(empty_db_url, "hub") == head_revision()


def test_schema_setting_and_downgrade_to_base_and_back(empty_db_url):
    upgrade(empty_db_url, "shop_a")
    with psycopg.connect(libpq_url(empty_db_url)) as c:
        tables = {r[0] for r in c.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'shop_a'")}
    assert {"orders", "order_items", "customers", "products", "settings", "snapshot_runs"} <= tables
    downgrade(empty_db_url, "shop_a", "base")
    assert current_revision(empty_db_url, "shop_a") is None
    with psycopg.connect(libpq_url(empty_db_url)) as c:
        left = {r[0] for r in c.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'shop_a'")}
    assert left == {"alembic_version"}
    upgrade(empty_db_url, "shop_a")
    assert current_revision(empty_db_url, "shop_a") == head_revision()


def test_the_fast_up_to_date_check_agrees_with_alembic_and_imports_neither(empty_db_url, tmp_path):
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    assert head_revisions() == set(ScriptDirectory.from_config(cfg).get_heads())
    assert current_revisions(empty_db_url, "shop_b") == set() and not is_up_to_date(empty_db_url, "shop_b")
    upgrade(empty_db_url, "shop_b", "0005")
    assert current_revisions(empty_db_url, "shop_b") == {"0005"} and not is_up_to_date(empty_db_url, "shop_b")
    upgrade(empty_db_url, "shop_b")
    assert is_up_to_date(empty_db_url, "shop_b")
    # the check every command runs first loads neither SQLAlchemy nor Alembic (a second of CPU each)
    code = (
        "import sys; from db.migrate import is_up_to_date; assert is_up_to_date(sys.argv[1], 'shop_b'); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('sqlalchemy', 'alembic')))"
    )
    out = subprocess.run([sys.executable, "-c", code, empty_db_url], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_runtime_partitions_are_invisible_to_autogenerate(db_url):
    with psycopg.connect(libpq_url(db_url), autocommit=True) as c:
        # the first and the last quarter the accepted dates allow
        ensure_partitions(c, [Quarter(2000, 1), Quarter.of(DateWindow.default().latest)])
    engine = sa.create_engine(sqlalchemy_url(db_url))
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"include_object": include_object, "compare_type": True})
        diff = compare_metadata(ctx, metadata)
    engine.dispose()
    assert diff == []


def test_partition_pattern_matches_every_name_the_code_can_create():
    for year in (1, 999, 1000, 2000, 2026, 9999):
        for q in (1, 2, 3, 4):
            assert PARTITION.match(Quarter(year, q).name), Quarter(year, q).name


def test_a_migration_waiting_behind_a_lock_times_out_rolls_back_and_retries(empty_db_url):
    """L7: a reader holding ACCESS SHARE (a nightly pg_dump, say) makes 0005's ALTER TABLE wait: it gives up after
    lock_timeout (instead of queueing every query on the table behind it), rolls back, and succeeds on a retry."""
    upgrade(empty_db_url, "shop_l7")
    downgrade(empty_db_url, "shop_l7", "0004")
    reader = psycopg.connect(libpq_url(empty_db_url))
    reader.execute("SELECT count(*) FROM shop_l7.snapshot_runs")  # an open transaction holding ACCESS SHARE
    pauses: list[float] = []

    def sleep(seconds: float) -> None:
        pauses.append(seconds)
        assert current_revision(empty_db_url, "shop_l7") == "0004"  # the timed-out try was rolled back whole
        if len(pauses) == 2:
            reader.commit()

    upgrade(empty_db_url, "shop_l7", lock_timeout="100ms", sleep=sleep)
    reader.close()
    assert len(pauses) == 2 and current_revision(empty_db_url, "shop_l7") == head_revision()
