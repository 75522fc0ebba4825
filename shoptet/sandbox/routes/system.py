"""``/api/system``: the snapshot job list and a job's detail (with its result URL once completed)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from ..formats import fmt_dt
from ..jobs import TERMINAL, Job
from ..query import PAGING, ApiError, Params, invalid, paginate
from ..state import SandboxState
from .common import StateDep, ok

router = APIRouter(prefix="/api/system")

JOB_LIST_FILTERS = frozenset({"status", "creationTimeFrom", "creationTimeTo", "completionTimeFrom", "completionTimeTo"})


def job_item(job: Job) -> dict:
    return {
        "jobId": job.job_id,
        "endpoint": job.endpoint,
        "creationTime": fmt_dt(job.created),
        "completionTime": fmt_dt(job.completed) if job.completed is not None else None,
        "status": job.status,
        "validUntil": fmt_dt(job.valid_until) if job.valid_until is not None else None,
        "language": job.language,
    }


def base_url(request: Request, state: SandboxState) -> str:
    return (state.base_url or str(request.base_url)).rstrip("/")


@router.get("/jobs")
def list_jobs(request: Request, state: StateDep) -> Response:
    p = Params(request.query_params, JOB_LIST_FILTERS | PAGING)
    status = p.string("status")
    if status is not None and status not in TERMINAL | {"pending", "running"}:
        raise invalid("status", f'Invalid "status" parameter. Unsupported value "{status}".')
    lo, hi = p.datetime("creationTimeFrom"), p.datetime("creationTimeTo")
    clo, chi = p.datetime("completionTimeFrom"), p.datetime("completionTimeTo")
    page, per = p.paging(100, 500)
    jobs = [
        j
        for j in state.jobs.all()
        if (state.faults.jobs_listed or j.finished)
        and (status is None or j.status == status)
        and (lo is None or j.created >= lo)
        and (hi is None or j.created <= hi)
        and (clo is None or (j.completed is not None and j.completed >= clo))
        and (chi is None or (j.completed is not None and j.completed <= chi))
    ]
    rows, paginator = paginate(jobs, page, per)
    return ok(request, {"jobs": [job_item(j) for j in rows], "paginator": paginator})


@router.get("/jobs/{job_id}")
def job_detail(request: Request, job_id: str, state: StateDep) -> Response:
    Params(request.query_params, frozenset())
    job, allowed = state.jobs.poll_detail(job_id)
    if job is None:
        raise ApiError(404, "job-not-found", f'Job with ID "{job_id}" not found.', job_id)
    if not allowed:
        raise ApiError(
            403,
            "job-detail-try-counter-exceeded-limit",
            "You have exceeded the limit of job detail request for unprocessed job "
            f'"{job_id}". Please wait for job:finished event after job is completed!',
            job_id,
        )
    item = job_item(job)
    detail = {
        **{k: item[k] for k in ("jobId", "endpoint", "creationTime", "completionTime")},
        "duration": f"{job.completed - job.created:.3f}" if job.completed is not None else None,
        "status": job.status,
        "resultUrl": f"{base_url(request, state)}/api-results/{job.result_name}" if job.result_name else None,
        "validUntil": item["validUntil"],
        "log": job.log,
        "language": job.language,
    }
    return ok(request, {"job": detail})
