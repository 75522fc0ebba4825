"""The snapshot import's steps, one Prefect task each: ensure webhook → request → wait → download → apply.

Each task retries transient failures on its decorator (``RETRIES``) and names its stage for the run's
failure record (``failed_at``). ``downloaded`` wraps the download so the file is deleted after the apply.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from prefect import task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE
from prefect.context import TaskRunContext

from db.connection import connection
from db.dates import DateWindow
from db.loader import ApplyOptions, ApplyResult, apply_snapshot_file
from db.partitions.rollover import archived_quarters
from db.settings.registry import get_settings_service
from flows import progress as progress_hooks
from flows import runtime
from flows.counters import KEYS, label
from flows.entities import Entity
from flows.reporting import logger, table_artifact
from flows.retrying import RETRIES
from flows.runs import failed_at
from flows.shoptet_api import RunPollCounter, make_client
from shoptet.download import sweep_downloads
from shoptet.snapshots import Job

ORDER_INCLUDE = "notes"


def snapshot_params(entity: Entity, changed_since: datetime | None) -> dict[str, Any]:
    params: dict[str, Any] = {}
    if changed_since is not None:
        params["changeTimeFrom"] = changed_since
    if Entity(entity) is Entity.orders:
        params["include"] = ORDER_INCLUDE
    return params


@task(name="ensure-webhook", on_failure=[failed_at("webhook")], **RETRIES)
def ensure_webhook() -> None:
    cfg = runtime.hub().cfg
    with make_client(cfg) as client:
        hook = client.ensure_job_finished_webhook(runtime.webhook_url(cfg))
    logger().info("job:finished webhook in place (id %s)", hook.get("id"))


@task(name="request-snapshot", on_failure=[failed_at("request")], **RETRIES)
def request_snapshot(entity: Entity, params: dict[str, Any]) -> str:
    """Ask for a snapshot; a retry first looks for the job an earlier attempt may have queued (its answer,
    not the job, may have been lost)."""
    with make_client() as client, _first_attempt(client.clock) as (first, retry):
        job_id = client.request_snapshot(Entity(entity).value, params, reuse_since=first if retry else None)
    logger().info("requested %s snapshot: job %s", Entity(entity).value, job_id)
    return job_id


# A Job carries the resultUrl, a bearer URL to the shop's data: never persisted as a task result, nor
# hashed into a cache key, whatever PREFECT_RESULTS_PERSIST_BY_DEFAULT says.
SECRET_RESULT: dict[str, Any] = dict(persist_result=False, cache_policy=NO_CACHE)


@task(name="wait-for-job", on_failure=[failed_at("wait")], **RETRIES, **SECRET_RESULT)
def wait_for_job(job_id: str, run_id: int | None = None) -> Job:
    hub = runtime.hub()
    # The 10-detail-poll budget is per job: persisted, shared by retries and reruns.
    counter = RunPollCounter(hub.url, hub.schema, run_id, job_id) if run_id is not None else None
    with make_client(hub.cfg) as client:
        job = client.wait_for_job(job_id, deadline_seconds=hub.cfg.job_deadline_seconds, poll_counter=counter)
    logger().info("job %s %s", job_id, job.status)
    return job


@task(name="download-result", on_failure=[failed_at("download")], **RETRIES, **SECRET_RESULT)
def download_result(job: Job) -> Path:
    cfg = runtime.hub().cfg
    cfg.scratch_dir.mkdir(parents=True, exist_ok=True)
    with make_client(cfg) as client:
        path = client.download_result(job, cfg.scratch_dir, min_free_bytes=cfg.min_free_disk_mb << 20)
    logger().info("downloaded job %s result: %.1f MB", job.job_id, path.stat().st_size / 1e6)
    return path


@contextmanager
def downloaded(job: Job) -> Iterator[Path]:
    """The job's result file for the block; deleted afterwards, applied or not."""
    path = download_result(job)
    try:
        yield path
    finally:
        Path(path).unlink(missing_ok=True)


@task(name="apply-snapshot", on_failure=[failed_at("apply")], **RETRIES)
def apply_snapshot(
    entity: Entity,
    path: Path,
    run_id: int,
    full: bool,
    as_of: datetime | None = None,
    allow_mass_delete: bool = False,
) -> dict[str, Any]:
    hub = runtime.hub()
    # An operator's runtime rules (hub settings set reject_threshold 0.02) win over the env defaults.
    rules = get_settings_service(hub.url, hub.schema)
    options = ApplyOptions(
        schema=hub.schema,
        full=full,
        as_of=as_of,
        allow_mass_delete=allow_mass_delete,
        mass_delete_share=rules.get("mass_delete_threshold"),
        keep_raw=hub.cfg.keep_raw_json,
        reject_threshold=rules.get("reject_threshold", hub.cfg.reject_threshold),
        window=DateWindow.of(rules.get("dates_accepted_from"), rules.get("dates_accepted_ahead_days")),
        archived=_retention_horizon(hub.url, hub.schema),
    )
    reporter = _ProgressReporter(f"Applying {Entity(entity).value} snapshot (run {run_id})")
    result = apply_snapshot_file(
        hub.url, Entity(entity).value, Path(path), run_id=run_id, options=options, progress=reporter
    )
    reporter.done()
    _log_result(result)
    return result.counters()


def _retention_horizon(url: str, schema: str) -> frozenset[tuple[int, int]]:
    """The archived quarters of order_items (``hub partitions``): an import does not write their items."""
    with connection(url, schema, autocommit=True) as conn:
        return archived_quarters(conn)


def sweep_old_downloads() -> None:
    """Delete our download files a killed run left behind (older than a day; our names only)."""
    cfg = runtime.hub().cfg
    try:
        files, size = sweep_downloads(cfg.scratch_dir, older_than=cfg.download_sweep_hours * 3600)
    except OSError as exc:  # never fail an import over housekeeping
        logger().warning("could not sweep old downloads in %s: %s", cfg.scratch_dir, exc)
        return
    if files:
        logger().info("swept %d old download file(s) (%.1f MB) from %s", files, size / 1e6, cfg.scratch_dir)


def counters_table(counters: dict[str, Any]) -> list[dict[str, Any]]:
    keys = ("lines", *KEYS, "child_rows")
    rows = [{"counter": label(k), "value": counters.get(k, 0)} for k in keys]
    rows.append({"counter": "seconds", "value": round(counters.get("seconds", 0.0), 2)})
    return rows


def publish_counters(entity: Entity, counters: dict[str, Any]) -> None:
    table_artifact(
        counters_table(counters),
        key=f"snapshot-{Entity(entity).value}-counters",
        description=f"Counters of the last {Entity(entity).value} snapshot apply (run {counters.get('run_id')})",
    )


# --- helpers ------------------------------------------------------------------------------------------

# First attempt (client clock) of each request-snapshot task run, so that its retries look for the job
# an earlier attempt may have queued before asking again.
_first_request_at: dict[str, float] = {}
_first_request_lock = threading.Lock()


@contextmanager
def _first_attempt(clock: Any) -> Iterator[tuple[float | None, bool]]:
    """(time of this task run's first attempt, whether this attempt is a retry); forgotten on success."""
    ctx = TaskRunContext.get()
    if ctx is None or ctx.task_run is None:  # outside Prefect: no retries to coordinate
        yield None, False
        return
    key = str(ctx.task_run.id)
    with _first_request_lock:
        first = _first_request_at.setdefault(key, clock())
    yield first, ctx.task_run.run_count > 1
    with _first_request_lock:  # not reached on failure: the retry still finds the first attempt's time
        _first_request_at.pop(key, None)


class _ProgressReporter:
    """Feeds the loader's progress to a Prefect progress artifact and to local listeners (the demo)."""

    def __init__(self, description: str) -> None:
        self.description = description
        self.last = -1.0
        self.artifact_id = create_progress_artifact(0.0, description=description) if TaskRunContext.get() else None

    def __call__(self, lines: int, done: int, total: int) -> None:
        pct = 100.0 * done / total if total else 100.0
        progress_hooks.emit(lines=lines, done=done, total=total)
        if self.artifact_id is not None and pct - self.last >= 5:
            self.last = pct
            update_progress_artifact(self.artifact_id, min(pct, 100.0), description=self.description)

    def done(self) -> None:
        if self.artifact_id is not None:
            update_progress_artifact(self.artifact_id, 100.0, description=self.description)


def _log_result(result: ApplyResult) -> None:
    logger().info(
        "%s: %d lines, %d inserted, %d updated, %d unchanged, %d rejected, %d skipped as older, %d deleted, "
        "%d child rows, %.1f s",
        result.entity,
        result.lines,
        result.inserted,
        result.updated,
        result.unchanged,
        result.rejected,
        result.skipped_older,
        result.deleted,
        result.child_rows,
        result.seconds,
    )
    if result.deletes_skipped_reason:
        logger().warning(result.deletes_skipped_reason)
