"""Snapshots: queueing a snapshot job (for the resource routers) and downloading its result file.

Result files live on the e-shop host, outside ``/api/``: the gate does not authenticate or limit them
(targeted path faults still apply).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, Response

from ..query import ApiError, Params
from ..state import SandboxState
from ..store import Record
from .common import StateDep, error_response, ok, request_id

router = APIRouter()


def queue_snapshot(
    request: Request, state: SandboxState, entity: str, records: list[Record], inc: frozenset[str], p: Params
) -> Response:
    """``GET /api/<entity>/snapshot``: queue a job over ``records`` and answer 202 with its id."""
    # a job:finished webhook is required even if the client only polls (reference §5.2)
    if state.webhooks.for_event("job:finished") is None:
        raise ApiError(
            403,
            "required-webhook-registration",
            "Webhook for job:finished is not registered.",
            "job:finished",
        )
    job = state.jobs.create(
        request.url.path,
        entity,
        inc,
        records,
        state.job_seconds,
        state.faults.job_outcome,
        p.string("language"),
    )
    return ok(request, {"jobId": job.job_id}, 202)


@router.get("/api-results/{name}")
def result_file(request: Request, name: str, state: StateDep) -> Response:
    rid = request_id(request)
    job = state.jobs.by_result(name)
    if job is None:
        return error_response(rid, 404, "file-not-found", f'File "{name}" not found.', name)
    expired = job.valid_until is not None and state.clock.time() > job.valid_until
    if expired or state.faults.expire_results:
        return error_response(
            rid, 410, "result-expired", "The result file has expired; request a new snapshot.", job.job_id
        )
    path = Path(state.jobs.results_dir) / name
    if state.faults.truncate_gzip:
        data = path.read_bytes()
        return Response(data[: len(data) // 2], media_type="application/gzip", headers={"X-Request-ID": rid})
    return FileResponse(path, media_type="application/gzip", headers={"X-Request-ID": rid})
