"""``retry_failed_snapshots``: give every failed snapshot up to 3 more attempts, then give up.

A retry re-downloads the old job's result while it is still valid; it re-requests the snapshot when the
result expired, when no job was ever created, or when the file itself was refused (a file rejected for
bad lines would be rejected again: Shoptet must produce a new one).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from prefect import flow

from db import clock
from db.connection import connection
from db.runs import due_failed_snapshots, update_failed_snapshot
from flows import runtime
from flows.entities import Entity
from flows.locks import LockHeld, job_lock
from flows.params import LockWait, OptionalTime
from flows.reporting import logger, table_artifact
from flows.run_names import run_name
from flows.snapshot import SnapshotFailed, import_snapshot

MAX_RETRY_ATTEMPTS = 3
RETRY_GAP = timedelta(hours=1)
# Failures after which the old job's file is no use: re-request instead of re-downloading.
# JobPollLimitError: the job's 10 detail polls are spent (counted across retries, reference §5.3), so
# its resultUrl can no longer be read safely: a new job is the only way on.
_REQUEST_AGAIN = {
    "ResultExpiredError",
    "TooManyRejectsError",
    "MassDeleteRefusedError",
    "JobFailedError",
    "JobDeadlineExceededError",
    "JobNotFoundError",
    "CorruptResultError",
    "JobPollLimitError",
}


def _reuse_job(fs: dict[str, Any]) -> str | None:
    if fs["job_id"] and fs["stage"] in ("wait", "download", "apply") and fs["error_class"] not in _REQUEST_AGAIN:
        return fs["job_id"]
    return None


@flow(name="retry-failed-snapshots", flow_run_name=run_name("retry-failed-snapshots"))
def retry_failed_snapshots(now: OptionalTime = None, lock_wait: LockWait = 0) -> list[dict[str, Any]]:
    """Retry every due ``failed_snapshots`` row once; mark it recovered, pending again, or gave_up.

    A snapshot whose entity lock is held by another job is left for the next run (no attempt used).

    Args:
        now: The clock: which rows are due (default: now; tests set it).
        lock_wait: Seconds to wait for the job lock when another job holds it (0: fail at once, null: wait forever).
    """
    hub = runtime.hub()
    now = now or clock.now()
    with job_lock("retry-failed-snapshots", wait=lock_wait):
        with connection(hub.url, hub.schema) as conn:
            due = due_failed_snapshots(conn, now)
        outcomes = [_retry(fs, now) for fs in due]
    table_artifact(
        outcomes or [{"id": None, "status": "nothing due"}],
        key="retry-failed-snapshots",
        description="Outcome of each failed snapshot retried in this run",
    )
    return outcomes


def _retry(fs: dict[str, Any], now: datetime) -> dict[str, Any]:
    """One attempt at one failed snapshot, and its outcome written back to its row."""
    attempt = fs["attempts"] + 1
    outcome = {"id": fs["id"], "entity": fs["entity"], "attempt": attempt, "error": None}
    try:
        counters = _attempt(fs)
    except LockHeld as exc:
        logger().info("failed snapshot %s (%s) skipped this run: %s", fs["id"], fs["entity"], exc)
        return {**outcome, "attempt": fs["attempts"], "status": "skipped (lock held)"}
    except SnapshotFailed as exc:
        cause = exc.__cause__ or exc
        gave_up = attempt >= MAX_RETRY_ATTEMPTS
        status = "gave_up" if gave_up else "pending"
        _update(
            fs["id"],
            attempts=attempt,
            status=status,
            error_class=type(cause).__name__,
            error_message=str(cause)[:4000],
            stage=exc.stage,
            run_id=exc.run_id,
            next_attempt_at=None if gave_up else now + RETRY_GAP,
        )
        logger().warning(
            "failed snapshot %s (%s) attempt %d/%d failed: %s%s",
            fs["id"],
            fs["entity"],
            attempt,
            MAX_RETRY_ATTEMPTS,
            type(cause).__name__,
            " - gave up" if gave_up else "",
        )
        return {**outcome, "status": status, "error": type(cause).__name__}
    _update(fs["id"], attempts=attempt, status="recovered", recovered_run_id=counters["run_id"], next_attempt_at=None)
    logger().info("failed snapshot %s (%s) recovered by run %s", fs["id"], fs["entity"], counters["run_id"])
    return {**outcome, "status": "recovered"}


def _attempt(fs: dict[str, Any]) -> dict[str, Any]:
    """Import the snapshot again; raises SnapshotFailed or LockHeld."""
    filters = fs["filters"] or {}
    changed_since = datetime.fromisoformat(filters["changeTimeFrom"]) if "changeTimeFrom" in filters else None
    reuse = _reuse_job(fs)
    entity = Entity(fs["entity"])
    try:
        return import_snapshot(entity, changed_since=changed_since, reuse_job_id=reuse, record_failure=False)
    except SnapshotFailed as exc:
        # The old job's result turned out to be unusable: one fresh request within this attempt.
        if reuse is None or exc.__cause__.__class__.__name__ not in _REQUEST_AGAIN:
            raise
        return import_snapshot(entity, changed_since=changed_since, record_failure=False)


def _update(failed_snapshot_id: int, **fields: Any) -> None:
    hub = runtime.hub()
    with connection(hub.url, hub.schema) as conn:
        update_failed_snapshot(conn, failed_snapshot_id, **fields)
