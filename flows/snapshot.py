"""Snapshot import: ensure webhook → request → wait → download → apply, each a Prefect task.

Every flow here is also a plain function a notebook can call (``import_snapshot("orders")``).
"""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_progress_artifact, create_table_artifact, update_progress_artifact

from db.connection import connection
from db.dates import DateWindow
from db.loader import ApplyOptions, ApplyResult, apply_snapshot_file
from db.runs import fail_run, record_failed_snapshot, start_run
from db.settings import get_settings_service
from flows import progress as progress_hooks
from flows import runtime
from flows.config import get_config
from flows.entities import Entity
from flows.locks import run_locked
from flows.retrying import TASK_RETRIES, retry_delays, transient_only
from flows.shoptet_api import RunPollCounter
from flows.shoptet_api import make_client as make_api_client
from shoptet.download import sweep_downloads
from shoptet.snapshots import Job

log = logging.getLogger(__name__)

ORDER_INCLUDE = "notes"


class SnapshotFailed(RuntimeError):
    """A snapshot failed after its retries; ``failed_snapshot_id`` names its ``failed_snapshots`` row."""

    def __init__(self, message: str, *, stage: str, failed_snapshot_id: int | None, run_id: int | None) -> None:
        super().__init__(message)
        self.stage, self.failed_snapshot_id, self.run_id = stage, failed_snapshot_id, run_id


def _logger() -> logging.Logger | logging.LoggerAdapter:
    try:
        return get_run_logger()
    except Exception:  # noqa: BLE001 - called outside a run (a notebook calling .fn)
        return log


# --- tasks --------------------------------------------------------------------------------------------

_RETRY = dict(retries=TASK_RETRIES, retry_jitter_factor=0.5, retry_condition_fn=transient_only)


@task(name="ensure-webhook", **_RETRY)
def ensure_webhook() -> None:
    cfg = get_config()
    with make_api_client(cfg) as client:
        hook = client.ensure_job_finished_webhook(runtime.webhook_url(cfg))
    _logger().info("job:finished webhook in place (id %s)", hook.get("id"))


# First attempt (client clock) of each request-snapshot task run, so that its retries look for the job
# an earlier attempt may have queued before asking again (the answer, not the job, may have been lost).
_first_request_at: dict[str, float] = {}
_first_request_lock = threading.Lock()


def _request_attempt_key() -> tuple[str | None, bool]:
    """(task run id, is a retry) of the running request-snapshot task; (None, False) outside Prefect."""
    from prefect.context import TaskRunContext

    ctx = TaskRunContext.get()
    if ctx is None or ctx.task_run is None:
        return None, False
    return str(ctx.task_run.id), ctx.task_run.run_count > 1


@task(name="request-snapshot", **_RETRY)
def request_snapshot(entity: Entity, params: dict[str, Any]) -> str:
    key, retry = _request_attempt_key()
    with make_api_client() as client:
        with _first_request_lock:
            first = _first_request_at.setdefault(key, client.clock()) if key else None
        # on failure the first attempt's time stays for the retry (a failed final attempt leaves a float)
        job_id = client.request_snapshot(Entity(entity).value, params, reuse_since=first if retry else None)
        with _first_request_lock:
            _first_request_at.pop(key, None)
    _logger().info("requested %s snapshot: job %s", Entity(entity).value, job_id)
    return job_id


@task(name="wait-for-job", **_RETRY)
def wait_for_job(job_id: str, run_id: int | None = None) -> Job:
    cfg = get_config()
    counter = None
    if run_id is not None:  # the 10-poll budget is per job: persisted, shared by retries and reruns
        counter = RunPollCounter(runtime.database_url(cfg), cfg.db_schema, run_id, job_id)
    with make_api_client(cfg) as client:
        job = client.wait_for_job(job_id, deadline_seconds=cfg.job_deadline_seconds, poll_counter=counter)
    _logger().info("job %s %s", job_id, job.status)
    return job


@task(name="download-result", **_RETRY)
def download_result(job: Job) -> Path:
    cfg = get_config()
    cfg.scratch_dir.mkdir(parents=True, exist_ok=True)
    with make_api_client(cfg) as client:
        path = client.download_result(job, cfg.scratch_dir, min_free_bytes=cfg.min_free_disk_mb << 20)
    _logger().info("downloaded job %s result: %.1f MB", job.job_id, path.stat().st_size / 1e6)
    return path


@task(name="apply-snapshot", **_RETRY)
def apply_snapshot(
    entity: Entity,
    path: Path,
    run_id: int,
    full: bool,
    as_of: datetime | None = None,
    allow_mass_delete: bool = False,
) -> dict[str, Any]:
    cfg = get_config()
    url = runtime.database_url(cfg)
    # An operator's runtime rule (hub settings set reject_threshold 0.02) wins over the env default.
    rules = get_settings_service(url, cfg.db_schema)
    threshold = rules.get("reject_threshold", cfg.reject_threshold)
    window = DateWindow.of(rules.get("dates_accepted_from"), rules.get("dates_accepted_ahead_days"))
    reporter = _ProgressReporter(f"Applying {Entity(entity).value} snapshot (run {run_id})")
    options = ApplyOptions(
        schema=cfg.db_schema,
        full=full,
        as_of=as_of,
        allow_mass_delete=allow_mass_delete,
        mass_delete_share=rules.get("mass_delete_threshold"),
        keep_raw=cfg.keep_raw_json,
        reject_threshold=threshold,
        window=window,
    )
    result = apply_snapshot_file(url, Entity(entity).value, Path(path), run_id=run_id, options=options,
                                 progress=reporter)
    reporter.done()
    _log_result(result)
    return result.counters()


class _ProgressReporter:
    """Feeds the loader's progress to a Prefect progress artifact and to local listeners (the demo)."""

    def __init__(self, description: str) -> None:
        self.description = description
        self.artifact_id = None
        self.last = -1.0
        try:
            self.artifact_id = create_progress_artifact(0.0, description=description)
        except Exception:  # noqa: BLE001 - no run context (plain function call): listeners only
            self.artifact_id = None

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
    _logger().info(
        "%s: %d lines, %d inserted, %d updated, %d unchanged, %d rejected, %d skipped as older, %d deleted, "
        "%d child rows, %.1f s",
        result.entity, result.lines, result.inserted, result.updated, result.unchanged, result.rejected,
        result.skipped_older, result.deleted, result.child_rows, result.seconds,
    )  # fmt: skip
    if result.deletes_skipped_reason:
        _logger().warning(result.deletes_skipped_reason)


def counters_table(counters: dict[str, Any]) -> list[dict[str, Any]]:
    keys = ("lines", "inserted", "updated", "unchanged", "rejected", "skipped_older", "deleted", "child_rows")
    rows = [{"counter": k, "value": counters.get(k, 0)} for k in keys]
    rows.append({"counter": "seconds", "value": round(counters.get("seconds", 0.0), 2)})
    return rows


# --- flows --------------------------------------------------------------------------------------------


def snapshot_params(entity: Entity, changed_since: datetime | None) -> dict[str, Any]:
    params: dict[str, Any] = {}
    if changed_since is not None:
        params["changeTimeFrom"] = changed_since
    if Entity(entity) is Entity.orders:
        params["include"] = ORDER_INCLUDE
    return params


@flow(name="import-snapshot", flow_run_name="import-{entity.value}-snapshot", log_prints=True)
def import_snapshot(
    entity: Entity,
    changed_since: datetime | None = None,
    allow_mass_delete: bool = False,
    reuse_job_id: str | None = None,
    record_failure: bool = True,
    lock_wait: float | None = 0,
) -> dict[str, Any]:
    """Import one entity through a Shoptet snapshot, holding the entity's job lock.

    Without ``changed_since`` the snapshot is full and makes the mirror equal to the shop (rows it no
    longer holds are deleted); with it, the snapshot is filtered and only upserts. ``reuse_job_id``
    (used by ``retry_failed_snapshots``) skips the request and downloads that job's result again.
    ``lock_wait``: seconds to wait for the lock (None: forever); a held lock ends the run in the
    state named ``LockHeld``.
    """
    entity = Entity(entity)
    cfg = get_config()
    url = runtime.database_url(cfg)
    runtime.ensure_schema(url, cfg.db_schema)
    return run_locked(
        lambda: _import_snapshot(entity, cfg, url, changed_since, allow_mass_delete, reuse_job_id, record_failure),
        entity.value, url=url, schema=cfg.db_schema, wait=lock_wait,
    )  # fmt: skip


def _import_snapshot(
    entity: Entity, cfg: Any, url: str, changed_since: datetime | None, allow_mass_delete: bool,
    reuse_job_id: str | None, record_failure: bool,
) -> dict[str, Any]:  # fmt: skip
    full = changed_since is None
    params = snapshot_params(entity, changed_since)
    delays = retry_delays()
    opts = dict(retry_delay_seconds=delays)

    _sweep_downloads(cfg)
    stage, job_id, run_id, path = "webhook", reuse_job_id, None, None
    try:
        if job_id is None:
            ensure_webhook.with_options(**opts)()
            stage = "request"
            job_id = request_snapshot.with_options(**opts)(entity, params)
        with connection(url, cfg.db_schema) as conn:
            run_id = start_run(conn, entity.value, source="api", full=full, filters=_jsonable(params),
                               job_id=job_id, flow_run_id=runtime.current_flow_run_id())
        stage = "wait"
        job = wait_for_job.with_options(**opts)(job_id, run_id)
        stage = "download"
        path = download_result.with_options(**opts)(job)
        stage = "apply"
        counters = apply_snapshot.with_options(**opts)(
            entity, path, run_id, full, as_of=job.creation_time, allow_mass_delete=allow_mass_delete
        )
    except Exception as exc:
        fs_id = None
        with connection(url, cfg.db_schema) as conn:
            if run_id is not None:
                fail_run(conn, run_id, f"{stage}: {type(exc).__name__}: {exc}")
            if record_failure:
                fs_id = record_failed_snapshot(
                    conn, entity=entity.value, filters=_jsonable(params), full=full, job_id=job_id, stage=stage,
                    error=exc, run_id=run_id, next_attempt_at=datetime.now(UTC),
                )  # fmt: skip
        _logger().error("%s snapshot failed at %s: %s: %s", entity.value, stage, type(exc).__name__, exc)
        raise SnapshotFailed(
            f"{entity.value} snapshot failed at stage {stage!r}: {type(exc).__name__}: {exc}",
            stage=stage, failed_snapshot_id=fs_id, run_id=run_id,
        ) from exc  # fmt: skip
    finally:
        if path is not None:
            Path(path).unlink(missing_ok=True)

    _artifact(entity.value, counters)
    return counters


@flow(name="import-file", flow_run_name="import-{entity.value}-file")
def import_file(
    entity: Entity, path: Path, full: bool = False, allow_mass_delete: bool = False, lock_wait: float | None = 0
) -> dict[str, Any]:
    """Apply a local snapshot file through the same loader (no API needed), under the entity's lock."""
    entity = Entity(entity)
    cfg = get_config()
    url = runtime.database_url(cfg)
    runtime.ensure_schema(url, cfg.db_schema)
    return run_locked(lambda: _import_file(entity, cfg, url, Path(path), full, allow_mass_delete),
                      entity.value, url=url, schema=cfg.db_schema, wait=lock_wait)


def _import_file(entity: Entity, cfg: Any, url: str, path: Path, full: bool, allow_mass_delete: bool) -> dict:
    with connection(url, cfg.db_schema) as conn:
        run_id = start_run(conn, entity.value, source="file", full=full, filters={"file": Path(path).name},
                           flow_run_id=runtime.current_flow_run_id())
    try:
        counters = apply_snapshot.with_options(retries=0)(
            entity, Path(path), run_id, full, allow_mass_delete=allow_mass_delete
        )
    except Exception as exc:
        with connection(url, cfg.db_schema) as conn:
            fail_run(conn, run_id, f"apply: {type(exc).__name__}: {exc}")
        raise
    _artifact(entity.value, counters)
    return counters


def _sweep_downloads(cfg: Any) -> None:
    """Delete our download files a killed run left behind (older than a day; our names only)."""
    try:
        files, size = sweep_downloads(cfg.scratch_dir, older_than=cfg.download_sweep_hours * 3600)
    except OSError as exc:  # never fail an import over housekeeping
        _logger().warning("could not sweep old downloads in %s: %s", cfg.scratch_dir, exc)
        return
    if files:
        _logger().info("swept %d old download file(s) (%.1f MB) from %s", files, size / 1e6, cfg.scratch_dir)


def _artifact(entity: str, counters: dict[str, Any]) -> None:
    try:
        create_table_artifact(
            counters_table(counters),
            key=f"snapshot-{entity}-counters",
            description=f"Counters of the last {entity} snapshot apply (run {counters.get('run_id')})",
        )
    except Exception:  # noqa: BLE001 - outside a Prefect run
        pass


def _jsonable(params: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in params.items()}

