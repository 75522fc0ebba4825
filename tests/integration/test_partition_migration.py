"""``hub migrate-partitions``: a plain order_items made partitioned, then split, while a writer keeps writing."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from decimal import Decimal

import psycopg
import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from psycopg import sql
from typer.testing import CliRunner

from benchmarks.legacy_layout import make_legacy_order_items
from db.connection import libpq_url, sqlalchemy_url
from db.partitions.migration import MigrationError, state
from db.partitions.plan import make_plan
from db.partitions.rollover import Quarter, ensure_partitions, existing_partitions, legacy_bound
from db.partitions.split import checksum, copy_batch, prepare, split_state, verify
from flows import runtime
from flows.partition_migration import migrate_partitions
from models.autogenerate import include_object
from models.tables import metadata

pytestmark = pytest.mark.integration

ROWS = 6000  # over 2024 Q1 .. 2026 Q4 (12 quarters)
TOUCHED = [f"B{n:06d}" for n in range(0, ROWS, 97)]  # base orders the writer updates


@pytest.fixture(scope="module", autouse=True)
def harness(prefect_harness):
    yield


@pytest.fixture
def legacy(db_url, no_retry_waits):
    """A migrated database turned into the old layout: plain order_items with ROWS rows."""
    with psycopg.connect(libpq_url(db_url), autocommit=True) as c:
        make_legacy_order_items(c)
        c.execute(
            """INSERT INTO order_items (order_code, item_id, created_at, position, code, amount, status_id)
               SELECT 'B' || lpad(g::text, 6, '0'), 1, timestamptz '2024-01-01 00:00+00' + g * interval '4 hours',
                      1, 'C' || (g %% 50), g %% 7, 1
                 FROM generate_series(0, %s - 1) g""",
            (ROWS,),
        )
    with runtime.override(database_url=db_url):
        yield db_url


UNTOUCHED = sql.SQL("order_code NOT LIKE 'W%' AND order_code <> ALL({})")


class Writer(threading.Thread):
    """Inserts new items and updates existing ones, one autocommit statement at a time, timing each."""

    def __init__(self, url: str):
        super().__init__(daemon=True)
        self.url, self.stop, self.errors, self.longest, self.statements = url, threading.Event(), [], 0.0, 0
        self.expected: dict[str, Decimal] = {}  # order_code -> amount the writer last wrote

    def run(self) -> None:
        with psycopg.connect(libpq_url(self.url), autocommit=True) as c:
            n = 0
            while not self.stop.is_set():
                n += 1
                code = f"W{n:06d}"
                self._do(c, "INSERT INTO order_items (order_code, item_id, created_at, position, amount) "
                            "VALUES (%s, 1, now() - %s * interval '1 day', 1, 0)", (code, n % 500))  # fmt: skip
                self.expected[code] = Decimal(0)
                for target in (f"W{max(1, n - 3):06d}", TOUCHED[n % len(TOUCHED)]):
                    self._do(c, "UPDATE order_items SET amount = %s WHERE order_code = %s", (n, target))
                    self.expected[target] = Decimal(n)

    def _do(self, c: psycopg.Connection, stmt: str, args: tuple) -> None:
        started = time.monotonic()
        try:
            c.execute(stmt, args)
        except psycopg.Error as exc:
            self.errors.append(str(exc))
        self.longest = max(self.longest, time.monotonic() - started)
        self.statements += 1

    def __enter__(self) -> Writer:
        self.start()
        time.sleep(0.2)
        return self

    def __exit__(self, *exc) -> None:
        time.sleep(0.2)
        self.stop.set()
        self.join(10)


def untouched_checksum(url: str) -> tuple[int, int]:
    with psycopg.connect(libpq_url(url), autocommit=True) as c:
        return checksum(c, "order_items", UNTOUCHED.format(sql.Literal(TOUCHED)))


def amounts(url: str) -> dict[str, Decimal]:
    with psycopg.connect(libpq_url(url)) as c:
        rows = c.execute(
            "SELECT order_code, amount FROM order_items WHERE order_code LIKE 'W%%' OR order_code = ANY(%s)", (TOUCHED,)
        ).fetchall()
    return dict(rows)


def autogenerate_diff(url: str) -> list:
    engine = sa.create_engine(sqlalchemy_url(url))
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"include_object": include_object, "compare_type": True})
        diff = compare_metadata(ctx, metadata)
    engine.dispose()
    return diff


def db_state(url: str) -> str:
    with psycopg.connect(libpq_url(url), autocommit=True) as c:
        return state(c)


def test_migrate_and_split_while_a_writer_writes(legacy):
    before = untouched_checksum(legacy)
    with Writer(legacy) as w:
        out = migrate_partitions()
        assert db_state(legacy) == "migrated"
        split = migrate_partitions(split=True, batch_size=500)
    assert w.errors == [] and w.statements > 50
    assert w.longest <= 1.0, w.longest
    assert out["state"] == "plain" and any(d.startswith("swapped") for d in out["did"])
    assert any(d.startswith("flipped") for d in split["did"]) and any(d.startswith("dropped") for d in split["did"])
    assert untouched_checksum(legacy) == before
    assert amounts(legacy) == w.expected  # no insert or update lost
    with psycopg.connect(libpq_url(legacy), autocommit=True) as c:
        assert split_state(c) == "done"
        parts = existing_partitions(c)
        assert {"order_items_2024_q1", "order_items_2026_q4"} <= parts and "order_items_legacy" not in parts
        assert c.execute("SELECT to_regclass('order_items_split'), to_regclass('order_items_legacy')").fetchone() == (
            None,
            None,
        )
    assert autogenerate_diff(legacy) == []


def test_rerun_is_idempotent_and_the_legacy_partition_looks_normal(legacy):
    first = migrate_partitions()
    again = migrate_partitions()
    assert first["did"] and again["did"] == [] and again["state"] == "migrated"
    assert autogenerate_diff(legacy) == []  # the legacy partition is invisible to Alembic, the parent is the model's
    with psycopg.connect(libpq_url(legacy), autocommit=True) as c:
        assert legacy_bound(c) is not None
        # the legacy partition adopted the pre-built key: the parent's primary key is valid
        assert c.execute("SELECT count(*) FROM pg_index WHERE NOT indisvalid").fetchone()[0] == 0
        # quarters it holds are covered: the loader and the rollover skip them instead of failing on overlap
        assert ensure_partitions(c, [Quarter(2025, 1)]) == []
        plan = make_plan(c, now=datetime(2026, 11, 30, tzinfo=UTC))
        assert plan.create == [] and any("held by order_items_legacy" in why for _, why in plan.skipped)


def test_an_interrupted_split_resumes_where_it_stopped(legacy):
    migrate_partitions()
    before = untouched_checksum(legacy)
    with Writer(legacy) as w:
        paused = migrate_partitions(split=True, batch_size=500, max_batches=3)
        assert paused["copy"]["rows"] == 1500 and not paused["copy"]["finished"]
        with psycopg.connect(libpq_url(legacy), autocommit=True) as c:
            assert split_state(c) == "copying"
        resumed = migrate_partitions(split=True, batch_size=500)
    assert resumed["copy"]["rows_copied_in_all"] >= ROWS  # resumed from the progress row, not from the start
    assert resumed["copy"]["rows"] < resumed["copy"]["rows_copied_in_all"]
    assert w.errors == [] and untouched_checksum(legacy) == before and amounts(legacy) == w.expected


def test_a_copy_that_differs_from_the_legacy_partition_is_never_flipped_and_nothing_is_dropped(legacy):
    """The split's only guard before the drop: the checksum of the copy against the legacy rows."""
    migrate_partitions()
    before = untouched_checksum(legacy)
    paused = migrate_partitions(split=True, batch_size=ROWS, max_batches=1)  # every row copied, not flipped
    assert paused["copy"]["rows"] == ROWS and split_state_of(legacy) == "copying"
    with psycopg.connect(libpq_url(legacy), autocommit=True) as c:  # damage the copy, behind the trigger's back
        assert c.execute("UPDATE order_items_split SET amount = amount + 1 WHERE order_code = 'B000001'").rowcount
    with pytest.raises(MigrationError, match="the copy differs from order_items_legacy"):
        migrate_partitions(split=True, batch_size=ROWS)
    assert split_state_of(legacy) == "copying"
    with psycopg.connect(libpq_url(legacy), autocommit=True) as c:
        assert "order_items_legacy" in existing_partitions(c)  # still attached: the rows are where they were
        assert c.execute("SELECT count(*) FROM order_items").fetchone()[0] == ROWS
    assert untouched_checksum(legacy) == before


def split_state_of(url: str) -> str:
    with psycopg.connect(libpq_url(url), autocommit=True) as c:
        return split_state(c)


def test_dry_run_changes_nothing(legacy):
    out = migrate_partitions(dry_run=True, split=True)
    assert out["dry_run"] and any("swap" in line for line in out["plan"])
    assert db_state(legacy) == "plain"


def test_refusals(db_url, no_retry_waits):
    with runtime.override(database_url=db_url):
        out = migrate_partitions()  # a fresh database: partitioned already
        assert out["did"] == [] and "nothing to migrate" in out["plan"][0]
        split = migrate_partitions(split=True)
        assert split["did"] == [] and "split: nothing to do" in split["plan"][-1]
        with psycopg.connect(libpq_url(db_url), autocommit=True) as c:
            make_legacy_order_items(c)
            c.execute("INSERT INTO order_items (order_code, item_id, created_at, position) "
                      "VALUES ('X', 1, now() + interval '5 years', 1)")  # fmt: skip
        with pytest.raises(MigrationError, match="cutover"):
            migrate_partitions()
        assert db_state(db_url) == "plain"


def test_cli(legacy, hub_env):
    from deployments.cli import app

    runner = CliRunner()
    dry = runner.invoke(app, ["migrate-partitions", "--dry-run"])
    assert dry.exit_code == 0 and "dry run: nothing was changed" in dry.output, dry.output
    done = runner.invoke(app, ["migrate-partitions", "--split", "--batch-size", "1000"])
    assert done.exit_code == 0 and "flipped" in done.output, done.output
    again = runner.invoke(app, ["migrate-partitions", "--split"])
    assert again.exit_code == 0 and "nothing to do" in again.output, again.output


def test_a_copy_batch_gives_way_to_a_writer_holding_a_row(legacy):
    """The batch's lock_timeout: it yields (and is retried) instead of holding a writer or deadlocking with it."""
    migrate_partitions()
    with psycopg.connect(libpq_url(legacy), autocommit=True) as c:
        prepare(c)
    writer = psycopg.connect(libpq_url(legacy))  # an open transaction holding the first row in key order
    writer.execute("UPDATE order_items SET amount = 42 WHERE order_code = 'B000000'")
    pauses: list[float] = []

    def sleep(seconds: float) -> None:
        pauses.append(seconds)
        if len(pauses) == 2:
            writer.commit()

    with psycopg.connect(libpq_url(legacy), autocommit=True) as c:
        assert copy_batch(c, 100, sleep=sleep) == 100
        while copy_batch(c, 2000):
            pass
        rows, _ = verify(c)
    writer.close()
    assert len(pauses) == 2 and rows == ROWS
    assert amounts(legacy)["B000000"] == Decimal(42)


def test_a_lock_timeout_in_the_migrations_concurrent_build_is_retried(legacy, monkeypatch):
    """L1: the build times out waiting for a writer, leaving an INVALID index; the retry drops it and builds."""
    import importlib
    import importlib.util

    import db.partitions.migration as migration

    for module in ("db.indexes.build", "db.partitions.migration"):  # the builder's (and the old copy's) timeout
        if importlib.util.find_spec(module) is not None:
            monkeypatch.setattr(importlib.import_module(module), "CONCURRENT_LOCK_TIMEOUT", "100ms")
    need = migration.needed_indexes()[1]
    writer = psycopg.connect(libpq_url(legacy))  # an open writing transaction: the build waits for it
    writer.execute("UPDATE order_items SET amount = 1 WHERE order_code = 'B000001'")
    pauses: list[float] = []

    def sleep(seconds: float) -> None:
        pauses.append(seconds)
        with psycopg.connect(libpq_url(legacy), autocommit=True) as c:  # the timed-out build's leftover
            valid = c.execute("SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass(%s)", (need.build_as,))
            assert valid.fetchone() == (False,)
        writer.commit()

    with psycopg.connect(libpq_url(legacy), autocommit=True) as c:
        c.execute("SET lock_timeout = '7s'")  # as a role's or database's own setting would
        assert migration.build_index(c, need, sleep=sleep) is True
        ix = [i for i in migration.table_indexes(c, "order_items") if i.name == need.build_as]
        assert c.execute("SHOW lock_timeout").fetchone()[0] == "7s"  # back, not clobbered with 0
    writer.close()
    assert len(pauses) == 1 and len(ix) == 1 and ix[0].valid


def test_a_split_killed_between_creating_the_progress_table_and_its_row_reruns(legacy):
    """L2: the state a kill inside prepare leaves (the progress table without its row, no trigger yet)."""
    from db.partitions.split import PROGRESS, TRIGGER

    migrate_partitions()
    with psycopg.connect(libpq_url(legacy), autocommit=True) as c:
        prepare(c)
        c.execute(sql.SQL("DROP TRIGGER {} ON order_items_legacy").format(sql.Identifier(TRIGGER)))
        c.execute(sql.SQL("DELETE FROM {}").format(sql.Identifier(PROGRESS)))
    out = migrate_partitions(split=True, batch_size=2000)
    assert any(d.startswith("flipped") for d in out["did"]), out
    with psycopg.connect(libpq_url(legacy), autocommit=True) as c:
        assert split_state(c) == "done"
        assert c.execute("SELECT count(*) FROM order_items").fetchone()[0] == ROWS


def test_status_counts_the_quarters_the_legacy_partition_holds_as_present(legacy):
    """L3: right after migrate-partitions the current quarter lives in order_items_legacy: not missing."""
    from db.status import partition_runway

    migrate_partitions()
    now = datetime.now(UTC)
    with psycopg.connect(libpq_url(legacy), autocommit=True) as c:
        bound = legacy_bound(c)
        current, ahead, _ = partition_runway(c, now)
    assert bound is not None and Quarter.of(now).end <= bound
    assert current is True and ahead >= 1


def test_an_index_the_parent_gained_after_prepare_is_built_before_the_flip_never_in_it(legacy):
    """M3: the flip's ATTACH would build it under ACCESS EXCLUSIVE; it is built concurrently first, or refused."""
    from db.dates import DateWindow
    from db.partitions.split import flip

    migrate_partitions()
    with psycopg.connect(libpq_url(legacy), autocommit=True) as c:
        prepare(c)
        while copy_batch(c, 5000):
            pass
        c.execute("CREATE INDEX ix_test_amount ON order_items (amount)")  # a release's new index, after prepare
        with pytest.raises(MigrationError, match="ix_test_amount"):
            flip(c, verify(c), DateWindow.default())  # the flip alone: refused, it never builds under its lock
        assert split_state(c) == "copying"
        shadow = existing_partitions(c, "order_items_split") - {"order_items_split_default"}
    out = migrate_partitions(split=True, batch_size=5000)
    assert any(d.startswith("flipped") for d in out["did"]), out
    with psycopg.connect(libpq_url(legacy), autocommit=True) as c:
        rows = c.execute(
            """SELECT t.relname, ic.relname FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
                 JOIN pg_class t ON t.oid = i.indrelid JOIN pg_inherits h ON h.inhrelid = ic.oid
                WHERE h.inhparent = 'ix_test_amount'::regclass AND t.relname LIKE 'order_items_20%'"""
        ).fetchall()
    built = {t: ix for t, ix in rows if t in shadow}
    assert "order_items_2024_q1" in shadow and set(built) == shadow
    # each is the one built concurrently before the flip (its name), none an ATTACH-time build (auto-named)
    assert all(ix == "ix_test_amount" + t.removeprefix("order_items") for t, ix in built.items()), built


def test_a_copy_batch_waits_out_a_long_transaction_holding_rows_then_resumes(legacy):
    """L8: an apply holds the rows it replaces for its whole (long) transaction; the batch keeps yielding and
    retrying past the old 8 tries, copies once the writer commits, and gives up with a clear error after its
    budget (the split resumes on the next run)."""
    migrate_partitions()
    with psycopg.connect(libpq_url(legacy), autocommit=True) as c:
        prepare(c)
    writer = psycopg.connect(libpq_url(legacy))  # one long transaction, as a full orders apply
    writer.execute("DELETE FROM order_items WHERE order_code = 'B000000'")
    pauses: list[float] = []

    def never(seconds: float) -> None:
        pauses.append(seconds)

    with psycopg.connect(libpq_url(legacy), autocommit=True) as c:
        with pytest.raises(MigrationError, match="held rows .* over 60 s"):
            copy_batch(c, 100, sleep=never, wait_budget=60)
        assert sum(pauses) <= 60 and progress_rows(c) == 0  # nothing copied, nothing lost
        pauses.clear()

        def commit_after_twelve(seconds: float) -> None:
            pauses.append(seconds)
            if len(pauses) == 12:
                writer.commit()

        assert copy_batch(c, 100, sleep=commit_after_twelve) == 100
        while copy_batch(c, 2000):
            pass
        rows, _ = verify(c)
    writer.close()
    assert len(pauses) == 12 and rows == ROWS - 1


def progress_rows(c: psycopg.Connection) -> int:
    return c.execute("SELECT rows_copied FROM order_items_split_progress").fetchone()[0]
