"""``migrate-partitions``: a plain ``order_items`` made partitioned online; ``split`` breaks up its legacy part.

Reads like the plan: plan → build the indexes concurrently → add and validate the range CHECK → swap
(one short transaction: the old table becomes the ``order_items_legacy`` partition) — then, with
``split``: prepare the shadow quarters and the sync trigger → copy in batches → verify → flip → drop
the detached legacy table. The SQL and the reasoning are in ``db/partitions/migration.py`` and
``db/partitions/split.py``. Every step checks what is already done, so a rerun after a kill continues.

Runs under the ``db-maintenance`` lock (DDL and backups share it); writers (imports) go on. A dry run
only reads and takes no lock. From a notebook: ``migrate_partitions(dry_run=True)``; as a deployment:
``flows/partition_migration.py:migrate_partitions``.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from db.connection import connection
from db.dates import DateWindow
from db.partitions import migration as mig
from db.partitions import split as split_db
from db.settings.registry import get_settings_service
from flows import runtime
from flows.locks import job_lock
from flows.params import LockWait, OptionalInt
from flows.reporting import logger, table_artifact
from flows.retrying import RETRIES
from flows.run_names import run_name

__all__ = ["MigrationError", "migrate_partitions"]

MigrationError = mig.MigrationError
BATCH_SIZE = 2000
PAUSE = 0.05  # seconds between copy batches: docs/benchmarks.md measured writers wait ≤ 1 s with it


def _window() -> DateWindow:
    hub = runtime.hub()
    rules = get_settings_service(hub.url, hub.schema)
    return DateWindow.of(rules.get("dates_accepted_from"), rules.get("dates_accepted_ahead_days"))


def _conn():  # noqa: ANN202
    hub = runtime.hub()
    return connection(hub.url, hub.schema, autocommit=True)


@task(name="plan-partition-migration", cache_policy=NO_CACHE, **RETRIES)
def plan_migration() -> mig.MigrationPlan:
    with _conn() as conn:
        return mig.make_plan(conn, _window())


@task(name="build-legacy-indexes", cache_policy=NO_CACHE, **RETRIES)
def build_indexes() -> list[str]:
    with _conn() as conn:
        return [f"built {n.build_as} CONCURRENTLY" for n in mig.needed_indexes() if mig.build_index(conn, n)]


@task(name="validate-range-check", cache_policy=NO_CACHE, **RETRIES)
def validate_range_check(plan: mig.MigrationPlan) -> list[str]:
    with _conn() as conn:
        mig.add_range_check(conn, plan.cutover)
        mig.validate_range_check(conn)
    return [f"{mig.RANGE_CHECK} validated"]


@task(name="swap-in-partitioned-table", cache_policy=NO_CACHE, **RETRIES)
def swap(plan: mig.MigrationPlan) -> list[str]:
    with _conn() as conn:
        started = time.monotonic()
        swapped = mig.retry_on_lock_timeout("swap", lambda: mig.swap(conn, plan.cutover))
        took = time.monotonic() - started
    return [f"swapped in {took:.2f}s: {mig.LEGACY} attached for [MINVALUE, {plan.cutover:%Y-%m-%d})"] if swapped else []


@task(name="prepare-split", cache_policy=NO_CACHE, **RETRIES)
def prepare_split() -> list[str]:
    with _conn() as conn:
        return split_db.prepare(conn)


@task(name="copy-legacy-rows", cache_policy=NO_CACHE, **RETRIES)
def copy_rows(batch_size: int, max_batches: int | None, pause: float = 0.0) -> dict[str, Any]:
    """Batches until the legacy partition is read to its end (or ``max_batches``); resumes from the progress row."""
    batches = rows = 0
    started = time.monotonic()
    with _conn() as conn:
        while max_batches is None or batches < max_batches:
            n = split_db.copy_batch(conn, batch_size)
            if n == 0:
                break
            batches, rows = batches + 1, rows + n
            time.sleep(pause)  # throttle: the copy's WAL competes with the writers' commits
            if batches % 200 == 0:
                p = split_db.progress(conn)
                logger().info("copied %d rows in %d batches this run (%d in all)", rows, batches, p.rows_copied)
        p = split_db.progress(conn)
        finished = max_batches is None or batches < max_batches
    return {"batches": batches, "rows": rows, "seconds": round(time.monotonic() - started, 1),
            "rows_copied_in_all": p.rows_copied, "finished": finished}  # fmt: skip


@task(name="verify-copy", cache_policy=NO_CACHE, **RETRIES)
def verify_copy() -> tuple[int, int]:
    with _conn() as conn:
        return split_db.verify(conn)


@task(name="flip-partitions", cache_policy=NO_CACHE, **RETRIES)
def flip(verified: tuple[int, int]) -> list[str]:
    with _conn() as conn:
        return split_db.flip_with_retries(conn, verified, _window(), sleep=time.sleep)


@task(name="drop-detached-legacy", cache_policy=NO_CACHE, **RETRIES)
def drop_legacy() -> int:
    with _conn() as conn:
        return split_db.drop_legacy(conn)


def _split_plan() -> list[str]:
    with _conn() as conn:
        st = split_db.split_state(conn)
        p = split_db.progress(conn)
    lines = {
        "not-migrated": ["split: order_items is not migrated yet (run without --split first)"],
        "to-prepare": ["split: prepare the shadow quarters and the sync trigger, copy, verify, flip, drop the legacy"],
        "copying": [f"split: resume the copy ({p.rows_copied if p else 0} of ~{p.legacy_estimate if p else 0} rows"
                    " copied), verify, flip, drop the legacy"],
        "flipped": [f"split: drop the detached, verified {split_db.LEGACY}"],
        "done": ["split: nothing to do (no legacy partition)"],
    }  # fmt: skip
    return lines[st]


@flow(
    name="migrate-partitions", flow_run_name=run_name("migrate-partitions", flags=("split", "dry_run")), log_prints=True
)
def migrate_partitions(
    dry_run: bool = False,
    split: bool = False,
    batch_size: int = BATCH_SIZE,
    max_batches: OptionalInt = None,
    lock_wait: LockWait = 0,
    pause: float = PAUSE,
) -> dict[str, Any]:
    """Make a plain ``order_items`` partitioned while writes go on; ``split``: move the legacy rows into quarters.

    A held lock raises ``LockHeld``; a refusal raises ``MigrationError``.

    Args:
        dry_run: Print the plan, change nothing, take no lock.
        split: Then copy the legacy partition's rows into quarter partitions (resumable) and swap.
        batch_size: Rows per copy batch (one short transaction each).
        max_batches: Stop the copy after so many batches (a later run resumes); null: copy everything.
        lock_wait: Seconds to wait for the db-maintenance lock held by another job (0: fail at once, null: forever).
        pause: Seconds between copy batches (less WAL pressure on the writers' commits).
    """
    with nullcontext() if dry_run else job_lock("db-maintenance", wait=lock_wait):
        plan = plan_migration()
        lines = plan.describe() + (_split_plan() if split else [])
        for line in lines:
            logger().info("%s%s", "dry run: " if dry_run else "", line)
        out: dict[str, Any] = {"dry_run": dry_run, "state": plan.state, "plan": lines, "did": [], "copy": None}
        if dry_run:
            return out
        if plan.state == "plain":
            out["did"] += build_indexes()
            out["did"] += validate_range_check(plan)
            out["did"] += swap(plan)
        if split:
            _split(out, batch_size, max_batches, pause)
    _publish(out)
    return out


def _split(out: dict[str, Any], batch_size: int, max_batches: int | None, pause: float) -> None:
    with _conn() as conn:
        st = split_db.split_state(conn)
    if st == "not-migrated":
        raise MigrationError("order_items has no legacy partition to split: run `hub migrate-partitions` first")
    if st in ("to-prepare", "copying"):
        out["did"] += prepare_split()
        out["copy"] = copy_rows(batch_size, max_batches, pause)
        if not out["copy"]["finished"]:
            out["did"].append(f"copy paused after {max_batches} batches; run again to resume")
            return
        verified = verify_copy()
        out["did"].append(f"verified: {verified[0]} rows, same checksum in {split_db.LEGACY} and the copy")
        attached = flip(verified)
        out["did"].append(f"flipped: {split_db.LEGACY} detached, {len(attached)} quarter partitions attached")
        st = "flipped"
    if st == "flipped":
        out["did"].append(f"dropped the detached {split_db.LEGACY}: {drop_legacy()} rows at verification, all copied")


def _publish(out: dict[str, Any]) -> None:
    rows = [{"step": line, "state": "planned"} for line in out["plan"]] + [
        {"step": line, "state": "done"} for line in out["did"]
    ]
    if out["copy"]:
        c = out["copy"]
        rows.append({"step": f"copy: {c['rows']} rows in {c['batches']} batches, {c['seconds']}s "
                             f"({c['rows_copied_in_all']} copied in all)",
                     "state": "finished" if c["finished"] else "paused"})  # fmt: skip
    table_artifact(rows, key="partition-migration", description="order_items online partitioning: plan and progress")
