"""Snapshot jobs: request one, wait for it without tripping the 10-poll cap (reference §5).

Shoptet answers a snapshot request with a jobId; the job runs ``pending -> running -> completed |
failed | killed | expired``. Polling the job *detail* of an unfinished job more than 10 times is a 403
(``job-detail-try-counter-exceeded-limit``, reference §5.3, §9.2), so ``wait_for_job`` watches the job
*list* and calls the detail only when the list shows the job finished, or - if the list does not show
the job - at most ``max_detail_polls`` (8) times.

The budget is per *job*, not per call: a retried task, a second process or the hourly retry flow wait
for the same job again, so the detail polls are counted by a ``DetailPollCounter`` that the caller can
persist (the flows keep it in ``snapshot_runs.job_detail_polls``). Invariant: at most
``MAX_DETAIL_POLLS`` (10) detail calls per job in all, of which at most 8 while the list does not show
it finished. Whether *list* calls also count toward Shoptet's cap is UNCONFIRMED (reference §5.3:
"Whether list calls count toward the 10-poll limit: UNCONFIRMED"); we keep the detail polls <= 10 even
if they do, and when the budget is spent raise ``JobPollLimitError`` ourselves instead of sending the
11th call: the retry flow then requests a new snapshot.

A snapshot request whose answer was lost (timeout, 5xx from a proxy after Shoptet queued the job) is
not simply sent again: ``request_snapshot`` first looks for a matching job created since its first
attempt in the job list and adopts it, so a retry does not queue a second job.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import parse_qsl, urlsplit

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
#: Shoptet's cap: the 11th detail poll of an unfinished job is a 403 (reference §5.3, §9.2). We never
#: send more than this many detail calls for one job, finished or not (whether list polls count toward
#: the cap is UNCONFIRMED, reference §5.3; the detail budget stays <= 10 either way).
MAX_DETAIL_POLLS = 10
#: A job created this many seconds before our first request attempt still counts as ours (Shoptet's
#: clock vs ours; job times have whole-second resolution).
JOB_MATCH_SKEW_SECONDS = 5.0


class DetailPollCounter(Protocol):
    """Detail polls of ONE job, across calls, retries and processes (the flows persist it)."""

    def used(self) -> int:
        """Detail calls already sent for the job."""
        ...

    def add(self) -> None:
        """Record one more detail call (called before it is sent, so a crash still counts it)."""
        ...


class LocalPollCounter:
    """In-memory counter: the default when the caller injects none (one per client and job)."""

    def __init__(self, used: int = 0) -> None:
        self._used = used
        self._lock = threading.Lock()

    def used(self) -> int:
        with self._lock:
            return self._used

    def add(self) -> None:
        with self._lock:
            self._used += 1


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


def request_snapshot(
    client: ShoptetClient,
    entity: str,
    params: Params | None = None,
    *,
    reuse_since: float | None = None,
) -> str:
    """``GET /api/{entity}/snapshot`` -> jobId (any 2xx; datetimes in params are formatted for Shoptet).

    A timeout or 5xx may hide a job Shoptet did queue: before sending the request again, the job list is
    searched for a matching job (same endpoint, and filters when the list shows them) created since the
    first attempt, and that job is adopted. ``reuse_since`` (client clock seconds) is the time of an
    earlier attempt by a previous call (a retried task): such a job is looked for before any request.
    """
    if entity not in SNAPSHOT_ENTITIES:
        raise ValueError(f"entity must be one of {SNAPSHOT_ENTITIES}, not {entity!r}")
    path = f"/api/{entity}/snapshot"
    first_attempt = client.clock()
    since = first_attempt if reuse_since is None else min(reuse_since, first_attempt)
    if reuse_since is not None:
        existing = find_matching_job(client, path, params, since)
        if existing is not None:
            log.warning("Reusing %s snapshot job %s queued by an earlier attempt", entity, existing.job_id)
            return _adopt(client, existing.job_id, since)
    attempt = 0
    while True:
        try:
            response = client.request("GET", path, params=params, max_transient_retries=0)
            break
        except (e.ServerError, e.TransportError, e.ProtocolError, e.LockedError) as exc:
            # The request may have reached Shoptet and queued a job whose answer we lost.
            existing = find_matching_job(client, path, params, since)
            if existing is not None:
                log.warning(
                    "Snapshot request for %s failed (%s) but job %s was queued: reusing it",
                    entity,
                    type(exc).__name__,
                    existing.job_id,
                )
                return _adopt(client, existing.job_id, since)
            if attempt >= client.policy.max_retries:
                raise
            client._backoff(attempt, type(exc).__name__, "GET", path)
            attempt += 1
    job_id = (response.data or {}).get("jobId") if isinstance(response.data, dict) else None
    if not job_id:
        raise e.ProtocolError(
            "snapshot response has no data.jobId",
            status=response.status,
            request_id=response.request_id,
            path=path,
        )
    log.info("Requested %s snapshot: job %s (request_id=%s)", entity, job_id, response.request_id)
    return _adopt(client, str(job_id), since)


def _adopt(client: ShoptetClient, job_id: str, requested_at: float) -> str:
    client._job_requested_at[job_id] = requested_at
    return job_id


def find_matching_job(
    client: ShoptetClient,
    endpoint: str,
    params: Params | None,
    since: float,
    *,
    skew: float = JOB_MATCH_SKEW_SECONDS,
) -> Job | None:
    """The newest job for ``endpoint`` created at or after ``since - skew`` that did not fail.

    The list's ``endpoint`` may carry the query (reference §5.3, UNCONFIRMED); when it does, the filters
    must equal ours. The flows hold the entity's lock while requesting, so no other snapshot of ours for
    the same endpoint is queued in that window.
    """
    from shoptet.client import encode_params

    created_from = datetime.fromtimestamp(since - skew, tz=UTC)
    wanted = encode_params(params)
    best: Job | None = None
    for item in _listed_jobs(client, created_from):
        job = Job.from_api(item)
        listed = urlsplit(job.endpoint or "")
        if listed.path.rstrip("/") != endpoint.rstrip("/") or job.failed:
            continue
        if listed.query and dict(parse_qsl(listed.query, keep_blank_values=True)) != wanted:
            continue
        if job.creation_time is not None and job.creation_time < created_from:
            continue
        if best is None or (job.creation_time or created_from) > (best.creation_time or created_from):
            best = job
    return best


def get_job(client: ShoptetClient, job_id: str) -> Job:
    """Job detail. Counts toward Shoptet's 10-poll cap while the job is unfinished: prefer wait_for_job."""
    data = client.get(f"/api/system/jobs/{job_id}")
    job = data.get("job", data) if isinstance(data, dict) else None  # older docs: fields under data
    if not isinstance(job, dict) or "jobId" not in job:
        raise e.ProtocolError("job detail has no data.job", path=f"/api/system/jobs/{job_id}")
    return Job.from_api(job)


def _listed_jobs(client: ShoptetClient, created_from: datetime) -> Iterator[dict]:
    """The items of ``GET /api/system/jobs`` created at or after ``created_from``, every page."""
    return client.iter_pages(
        "/api/system/jobs",
        "jobs",
        params={"creationTimeFrom": created_from},
        per_page=JOBS_PER_PAGE,
        key=lambda j: j.get("jobId"),
    )


def find_listed_job(client: ShoptetClient, job_id: str, created_from: datetime) -> Job | None:
    """Look the job up in ``GET /api/system/jobs`` (created at or after ``created_from``)."""
    for item in _listed_jobs(client, created_from):
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
    poll_counter: DetailPollCounter | None = None,
) -> Job:
    """Wait until the job completes and return its detail (with ``result_url``).

    Polls the job list with gaps ``first_gap, 2*first_gap, ...`` capped at ``max_gap``. Raises
    ``JobFailedError`` (failed/killed/expired, with Shoptet's log), ``JobDeadlineExceededError``, or
    ``JobPollLimitError`` when the job's detail-poll budget (``MAX_DETAIL_POLLS`` in all, counted by
    ``poll_counter`` across retries) is spent. ``created_after`` bounds the list query; by default the
    time this client requested the job (minus a margin for clock skew), else 27 h ago. Every call made
    here is bounded by the deadline (a longer ``Retry-After`` raises instead of sleeping past it).
    """
    if max_detail_polls > MAX_DETAIL_POLLS - 1:
        raise ValueError("max_detail_polls must stay below Shoptet's cap of 10")
    counter = poll_counter if poll_counter is not None else client._poll_counter(job_id)
    start = client.clock()
    deadline = start + deadline_seconds
    created_from = created_after or _default_created_from(client, job_id, start)
    last_status: str | None = None
    gap = first_gap
    with client.deadline(deadline):
        while True:
            listed = find_listed_job(client, job_id, created_from)
            if listed is not None:
                last_status = listed.status
            # Detail when the list says finished, or (bounded) when the list does not show the job at all.
            if listed is None or listed.finished:
                used = counter.used()
                budget = MAX_DETAIL_POLLS if listed is not None else max_detail_polls
                if used < budget:
                    counter.add()
                    job = get_job(client, job_id)
                    last_status = job.status
                    if job.finished:
                        return _finish(job)
                elif listed is not None:
                    if listed.failed:
                        return _finish(listed)  # raises JobFailedError (without Shoptet's log)
                    raise e.JobPollLimitError(
                        f"job {job_id} is {listed.status} but its {MAX_DETAIL_POLLS} detail polls are used "
                        f"up ({used} sent); request the snapshot again",
                        error_code="job-detail-try-counter-exceeded-limit",
                        instance=job_id,
                    )
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
    log.info("job %s completed; result %s valid until %s", job.job_id, mask_url(job.result_url), job.valid_until)
    return job


def _default_created_from(client: ShoptetClient, job_id: str, now: float) -> datetime:
    requested_at = client._job_requested_at.get(job_id)
    if requested_at is not None:
        since = requested_at - CREATION_MARGIN_SECONDS
    else:
        since = now - UNKNOWN_JOB_LOOKBACK_SECONDS
    return datetime.fromtimestamp(since, tz=UTC)
