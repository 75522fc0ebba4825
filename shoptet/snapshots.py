"""Snapshot jobs: request one, wait for it without tripping the 10-poll cap (reference §5).

Shoptet answers a snapshot request with a jobId; the job runs ``pending -> running -> completed |
failed | killed | expired``. Polling the job *detail* of an unfinished job more than 10 times is a 403
(``job-detail-try-counter-exceeded-limit``), so ``wait_for_job`` watches the job *list* (which has no
such cap documented) and calls the detail only when the list shows the job finished, or - if the list
does not show the job - at most ``max_detail_polls`` (8) times. Invariant: at most 8 detail calls ever
see the job unfinished, so the cap of 10 is never reached.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from shoptet import errors as e
from shoptet.timefmt import parse_datetime

if TYPE_CHECKING:
    from shoptet.client import Params, ShoptetClient

log = logging.getLogger(__name__)

SNAPSHOT_ENTITIES = ("orders", "customers", "products")
FINISHED = frozenset({"completed", "failed", "killed", "expired"})
FAILED = frozenset({"failed", "killed", "expired"})
JOBS_PER_PAGE = 500
#: Look this far before our own request time in the job list (clock skew between us and Shoptet).
CREATION_MARGIN_SECONDS = 3600.0
#: When we did not request the job ourselves: results live 24 h, a broken job fails after 3 h.
UNKNOWN_JOB_LOOKBACK_SECONDS = 27 * 3600.0


def mask_url(url: str | None, keep: int = 8) -> str:
    """Host + first characters of the path: result URLs are bearer links to personal data."""
    if not url:
        return "<none>"
    parts = urlsplit(url)
    path = parts.path or "/"
    return f"{parts.scheme}://{parts.netloc}{path[:keep]}…"


@dataclass(frozen=True)
class Job:
    """A snapshot job (``data.job`` of the detail, or an item of the job list)."""

    job_id: str
    status: str
    result_url: str | None = field(default=None, repr=False)
    valid_until: datetime | None = None
    log: str | None = None
    creation_time: datetime | None = None
    completion_time: datetime | None = None
    endpoint: str | None = None
    duration: str | None = None

    @classmethod
    def from_api(cls, data: dict[str, Any]) -> Job:
        return cls(
            job_id=str(data["jobId"]),
            status=str(data.get("status") or ""),
            result_url=data.get("resultUrl"),
            valid_until=parse_datetime(data.get("validUntil")),
            log=data.get("log"),
            creation_time=parse_datetime(data.get("creationTime")),
            completion_time=parse_datetime(data.get("completionTime")),
            endpoint=data.get("endpoint"),
            duration=data.get("duration"),
        )

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    @property
    def failed(self) -> bool:
        return self.status in FAILED

    def __repr__(self) -> str:
        return (
            f"Job(job_id={self.job_id!r}, status={self.status!r}, result_url={mask_url(self.result_url)!r}, "
            f"valid_until={self.valid_until!r}, completion_time={self.completion_time!r})"
        )

    # camelCase aliases matching the API field names.
    jobId = property(lambda self: self.job_id)  # noqa: N815
    resultUrl = property(lambda self: self.result_url)  # noqa: N815
    validUntil = property(lambda self: self.valid_until)  # noqa: N815
    creationTime = property(lambda self: self.creation_time)  # noqa: N815
    completionTime = property(lambda self: self.completion_time)  # noqa: N815


def request_snapshot(client: ShoptetClient, entity: str, params: Params | None = None) -> str:
    """``GET /api/{entity}/snapshot`` -> jobId (any 2xx; datetimes in params are formatted for Shoptet)."""
    if entity not in SNAPSHOT_ENTITIES:
        raise ValueError(f"entity must be one of {SNAPSHOT_ENTITIES}, not {entity!r}")
    requested_at = client.clock()
    response = client.request("GET", f"/api/{entity}/snapshot", params=params)
    job_id = (response.data or {}).get("jobId") if isinstance(response.data, dict) else None
    if not job_id:
        raise e.ProtocolError(
            "snapshot response has no data.jobId",
            status=response.status,
            request_id=response.request_id,
            path=f"/api/{entity}/snapshot",
        )
    client._job_requested_at[str(job_id)] = requested_at
    log.info("Requested %s snapshot: job %s (request_id=%s)", entity, job_id, response.request_id)
    return str(job_id)


def get_job(client: ShoptetClient, job_id: str) -> Job:
    """Job detail. Counts toward Shoptet's 10-poll cap while the job is unfinished: prefer wait_for_job."""
    data = client.get(f"/api/system/jobs/{job_id}")
    job = data.get("job", data) if isinstance(data, dict) else None  # older docs: fields under data
    if not isinstance(job, dict) or "jobId" not in job:
        raise e.ProtocolError("job detail has no data.job", path=f"/api/system/jobs/{job_id}")
    return Job.from_api(job)


def find_listed_job(client: ShoptetClient, job_id: str, created_from: datetime) -> Job | None:
    """Look the job up in ``GET /api/system/jobs`` (created at or after ``created_from``)."""
    for item in client.iter_pages(
        "/api/system/jobs",
        "jobs",
        params={"creationTimeFrom": created_from},
        per_page=JOBS_PER_PAGE,
        key=lambda j: j.get("jobId"),
    ):
        if str(item.get("jobId")) == job_id:
            return Job.from_api(item)
    return None


def wait_for_job(
    client: ShoptetClient,
    job_id: str,
    deadline_seconds: float = 3600.0,
    *,
    created_after: datetime | None = None,
    first_gap: float = 2.0,
    max_gap: float = 60.0,
    max_detail_polls: int = 8,
) -> Job:
    """Wait until the job completes and return its detail (with ``result_url``).

    Polls the job list with gaps ``first_gap, 2*first_gap, ...`` capped at ``max_gap``. Raises
    ``JobFailedError`` (failed/killed/expired, with Shoptet's log) or ``JobDeadlineExceededError``.
    ``created_after`` bounds the list query; by default the time this client requested the job
    (minus a margin for clock skew), else 27 h ago.
    """
    if max_detail_polls > 9:
        raise ValueError("max_detail_polls must stay below Shoptet's cap of 10")
    start = client.clock()
    deadline = start + deadline_seconds
    created_from = created_after or _default_created_from(client, job_id, start)
    unfinished_detail_polls = 0
    last_status: str | None = None
    gap = first_gap
    while True:
        listed = find_listed_job(client, job_id, created_from)
        if listed is not None:
            last_status = listed.status
        # Detail when the list says finished, or (bounded) when the list does not show the job at all.
        if (listed is None or listed.finished) and unfinished_detail_polls < max_detail_polls:
            job = get_job(client, job_id)
            last_status = job.status
            if job.finished:
                return _finish(job)
            unfinished_detail_polls += 1
        now = client.clock()
        if now >= deadline:
            raise e.JobDeadlineExceededError(
                f"job {job_id} not finished after {now - start:.0f}s (last status: {last_status})",
                job_id=job_id,
                last_status=last_status,
            )
        log.debug("job %s is %s; next poll in %.0fs", job_id, last_status, min(gap, deadline - now))
        client.sleep(min(gap, deadline - now))
        gap = min(gap * 2, max_gap)


def _finish(job: Job) -> Job:
    if job.failed:
        raise e.JobFailedError(
            f"snapshot job ended with status {job.status}", job_id=job.job_id, status=job.status, log=job.log
        )
    log.info(
        "job %s completed; result %s valid until %s", job.job_id, mask_url(job.result_url), job.valid_until
    )
    return job


def _default_created_from(client: ShoptetClient, job_id: str, now: float) -> datetime:
    requested_at = client._job_requested_at.get(job_id)
    if requested_at is not None:
        since = requested_at - CREATION_MARGIN_SECONDS
    else:
        since = now - UNKNOWN_JOB_LOOKBACK_SECONDS
    return datetime.fromtimestamp(since, tz=UTC)
