"""One place where a flow's run is recorded and its failure written down: ``recorded_run``.

A flow wraps its steps in ``with recorded_run(entity, …) as run:``; ``run.start(…)`` creates the
``snapshot_runs`` row once the flow knows what it runs (the job id, the file). On an exception the
helper marks that row failed, records a ``failed_snapshots`` row if asked (the hourly retry flow takes
it from there), logs it, and raises ``RunFailed`` (or the flow's subclass of it) naming the stage.

The stage is the step that failed, named by the task itself: each task declares
``on_failure=[failed_at("download")]``, a Prefect state hook that notes the stage on the run being
recorded (a context variable; Prefect copies the context into task runs). So the flow body reads
top-down, with no stage variable to keep up to date.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from db import clock
from db.connection import connection
from db.runs import fail_run, record_failed_snapshot, start_run
from flows import runtime
from flows.entities import Entity
from flows.reporting import logger


class RunFailed(RuntimeError):
    """A flow's run failed after its retries; ``stage`` names the step, ``run_id`` its snapshot_runs row."""

    def __init__(self, message: str, *, stage: str, run_id: int | None, failed_snapshot_id: int | None = None):
        super().__init__(message)
        self.stage, self.run_id, self.failed_snapshot_id = stage, run_id, failed_snapshot_id


@dataclass
class RecordedRun:
    entity: Entity
    full: bool
    filters: dict[str, Any]
    run_id: int | None = None
    job_id: str | None = None
    stage: str = "setup"  # set by the failing task's failed_at hook

    def start(self, *, source: str, job_id: str | None = None, filters: dict[str, Any] | None = None) -> int:
        """Create the run's ``snapshot_runs`` row; returns its id."""
        hub = runtime.hub()
        self.job_id = job_id
        with connection(hub.url, hub.schema) as conn:
            self.run_id = start_run(
                conn,
                self.entity.value,
                source=source,
                full=self.full,
                filters=filters if filters is not None else self.filters,
                job_id=job_id,
                flow_run_id=runtime.current_flow_run_id(),
            )
        return self.run_id


_CURRENT: ContextVar[RecordedRun | None] = ContextVar("hub_recorded_run", default=None)


def failed_at(stage: str) -> Callable[[Any, Any, Any], None]:
    """A task's ``on_failure`` hook: its failure (after its retries) happened at ``stage``."""

    def hook(task: Any, task_run: Any, state: Any) -> None:
        run = _CURRENT.get()
        if run is not None:
            run.stage = stage

    return hook


@contextmanager
def recorded_run(
    entity: Entity,
    *,
    full: bool,
    filters: dict[str, Any],
    what: str,
    failure: type[RunFailed] | None = RunFailed,
    record_failed_snapshot_row: bool = False,
    advice: str = "",
) -> Iterator[RecordedRun]:
    """Record the run of ``what`` (e.g. "orders snapshot"); see the module docstring.

    ``failure``: the exception type raised on failure, from the original one (None: re-raise the
    original as it is). ``record_failed_snapshot_row``: also write a ``failed_snapshots`` row.
    ``advice`` is appended to the error message (what happens next).
    """
    run = RecordedRun(Entity(entity), full, filters)
    token = _CURRENT.set(run)
    try:
        yield run
    except Exception as exc:
        fs_id = _record_failure(run, exc, record_failed_snapshot_row)
        logger().error("%s failed at %s: %s: %s", what, run.stage, type(exc).__name__, exc)
        if failure is None:
            raise
        raise failure(
            f"{what} failed at stage {run.stage!r}: {type(exc).__name__}: {exc}{advice}",
            stage=run.stage,
            run_id=run.run_id,
            failed_snapshot_id=fs_id,
        ) from exc
    finally:
        _CURRENT.reset(token)


def _record_failure(run: RecordedRun, exc: Exception, failed_snapshot_row: bool) -> int | None:
    hub = runtime.hub()
    with connection(hub.url, hub.schema) as conn:
        if run.run_id is not None:
            fail_run(conn, run.run_id, f"{run.stage}: {type(exc).__name__}: {exc}")
        if not failed_snapshot_row:
            return None
        return record_failed_snapshot(
            conn,
            entity=run.entity.value,
            filters=run.filters,
            full=run.full,
            job_id=run.job_id,
            stage=run.stage,
            error=exc,
            run_id=run.run_id,
            next_attempt_at=clock.now(),
        )
