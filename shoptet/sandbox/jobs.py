"""Asynchronous snapshot jobs (reference §5): lifecycle on the sandbox clock and result files.

A job captures the matching records when it is created (records are immutable, so this is a
cheap list of references) and writes its gzip JSON Lines file when the clock says it is done.
Status is re-evaluated lazily by `refresh()` (every job-related request, plus the server's
ticker), so a test moves a job along just by advancing a ManualClock.
"""

from __future__ import annotations

import heapq
import random
import shutil
import string
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from .clock import Clock
from .generator import write_gzip_lines
from .render import render_order, render_product
from .store import Record

FAIL_AFTER = 3 * 3600  # a failing job is only marked failed 3 h after creation (OA)
RESULT_TTL = 24 * 3600  # results are kept 24 h (DEV-ASYNC)
MAX_UNFINISHED_POLLS = 10  # the 11th detail poll of an unfinished job is a 403 (OA)
TERMINAL = frozenset({"completed", "failed", "killed", "expired"})
#: "never": the job stays running forever (a stuck job; the client must give up after its deadline).
OUTCOMES = frozenset({"completed", "failed", "killed", "expired", "never"})
_ALNUM = string.ascii_lowercase + string.digits
MALFORMED_LINE = b'{"code": "2024000001", "broken json'


@dataclass
class ResultFaults:
    """What the job writer needs from the fault knobs at completion time."""

    malformed_line_at: int | None = None
    amount_as_number: bool = False


@dataclass
class Job:
    job_id: str
    endpoint: str
    entity: str
    include: frozenset[str]
    created: float
    duration: float
    outcome: str
    language: str | None = None
    records: list[Record] | None = field(default=None, repr=False)
    status: str = "pending"
    completed: float | None = None
    result_name: str | None = None
    valid_until: float | None = None
    log: str | None = None
    polls: int = 0
    lines: int = 0

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL


class JobManager:
    def __init__(
        self,
        clock: Clock,
        rng: random.Random,
        result_faults: Callable[[], ResultFaults],
        on_finished: Callable[[Job], None] | None = None,
        results_dir: Path | None = None,
    ) -> None:
        self.clock = clock
        self._rng = rng
        self._result_faults = result_faults
        self._on_finished = on_finished
        self._own_dir = results_dir is None
        self.results_dir = Path(results_dir or tempfile.mkdtemp(prefix="shoptet-sandbox-results-"))
        self.results_dir.mkdir(parents=True, exist_ok=True)
        self._jobs: dict[str, Job] = {}
        # refresh() runs on every job request and tick: it looks only at unfinished jobs and at results
        # due to expire, not at every job ever made (a soak's shop makes thousands).
        self._unfinished: dict[str, Job] = {}
        self._expiring: list[tuple[float, str]] = []  # heap of (valid_until, result file name)
        self._by_result: dict[str, str] = {}
        self._lock = threading.RLock()

    def _new_id(self, n: int = 7) -> str:
        while True:
            jid = "".join(self._rng.choice(_ALNUM) for _ in range(n))
            if jid not in self._jobs:
                return jid

    def create(
        self,
        endpoint: str,
        entity: str,
        include: frozenset[str],
        records: list[Record],
        duration: float,
        outcome: str,
        language: str | None = None,
    ) -> Job:
        if outcome not in OUTCOMES:
            raise ValueError(f"job outcome must be one of {sorted(OUTCOMES)}")
        with self._lock:
            job = Job(
                self._new_id(),
                endpoint,
                entity,
                include,
                self.clock.time(),
                max(0.0, duration),
                outcome,
                language,
                records,
            )
            self._jobs[job.job_id] = job
            self._unfinished[job.job_id] = job
            return job

    def get(self, job_id: str) -> Job | None:
        self.refresh()
        with self._lock:
            return self._jobs.get(job_id)

    def all(self) -> list[Job]:
        self.refresh()
        with self._lock:
            return list(self._jobs.values())

    def by_result(self, name: str) -> Job | None:
        self.refresh()
        with self._lock:
            jid = self._by_result.get(name)
            return self._jobs.get(jid) if jid else None

    def poll_detail(self, job_id: str) -> tuple[Job | None, bool]:
        """Job plus whether this detail poll is allowed (unfinished jobs: 10 polls max)."""
        self.refresh()
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                return None, True
            if job.finished:
                return job, True
            job.polls += 1
            return job, job.polls <= MAX_UNFINISHED_POLLS

    def refresh(self) -> None:
        """Advance every unfinished job to the status the clock implies; delete expired result files."""
        finished: list[Job] = []
        with self._lock:
            now = self.clock.time()
            while self._expiring and now > self._expiring[0][0]:
                (self.results_dir / heapq.heappop(self._expiring)[1]).unlink(missing_ok=True)
            for job in list(self._unfinished.values()):
                start_running = job.created + job.duration * 0.25
                end = job.created + (FAIL_AFTER if job.outcome == "failed" else job.duration)
                if now < start_running:
                    continue
                job.status = "running"
                if now < end or job.outcome == "never":
                    continue
                self._finish(job, end)
                del self._unfinished[job.job_id]
                if job.result_name and job.valid_until is not None:
                    heapq.heappush(self._expiring, (job.valid_until, job.result_name))
                finished.append(job)
        for job in finished:
            # a job that errors is marked failed after 3 h and sends no webhook (OA)
            if self._on_finished and job.status != "failed":
                self._on_finished(job)

    def _finish(self, job: Job, at: float) -> None:
        job.completed = at
        if job.outcome == "completed":
            job.result_name = f"{job.job_id}-{''.join(self._rng.choice(_ALNUM) for _ in range(7))}.json.gz"
            job.lines = self._write(job, self.results_dir / job.result_name)
            self._by_result[job.result_name] = job.job_id
            job.valid_until = at + RESULT_TTL
            job.log = f"Exported {job.lines} records."
        elif job.outcome == "failed":
            job.log = "Job failed: internal error while exporting data. (sandbox fault job_outcome=failed)"
        elif job.outcome == "killed":
            job.log = "Job was killed. (sandbox fault job_outcome=killed)"
        else:
            job.completed = None
            job.log = "Job expired before it was processed. (sandbox fault job_outcome=expired)"
        job.status = job.outcome
        job.records = None

    def _write(self, job: Job, path: Path) -> int:
        faults = self._result_faults()
        records = job.records or []
        inc = job.include
        dumps = orjson.dumps
        if job.entity == "orders":

            def render(rec: Record) -> bytes:
                return dumps(render_order(rec.data(), inc, faults.amount_as_number))
        elif job.entity == "products":

            def render(rec: Record) -> bytes:
                return dumps(render_product(rec.data(), inc))
        else:

            def render(rec: Record) -> bytes:
                return rec.raw

        lines = (MALFORMED_LINE if n == faults.malformed_line_at else render(rec) for n, rec in enumerate(records, 1))
        return write_gzip_lines(path, lines)

    def close(self) -> None:
        with self._lock:
            if self._own_dir:
                shutil.rmtree(self.results_dir, ignore_errors=True)
            else:
                for name in self._by_result:
                    (self.results_dir / name).unlink(missing_ok=True)
