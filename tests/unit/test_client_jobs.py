"""wait_for_job against a scripted job service (httpx.MockTransport) with a fake clock."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest

from shoptet import errors as e
from shoptet.client import ShoptetClient
from shoptet.timefmt import format_datetime, parse_datetime

T0 = datetime(2026, 9, 15, 10, 0, tzinfo=UTC).timestamp()


class JobService:
    """One snapshot job that finishes at ``T0 + finish_after`` with ``outcome``; enforces the 10-poll cap."""

    def __init__(self, finish_after: float, outcome: str = "completed", listed: bool = True) -> None:
        self.now = T0
        self.sleeps: list[float] = []
        self.finish_after = finish_after
        self.outcome = outcome
        self.listed = listed
        self.unfinished_detail_calls = 0
        self.detail_calls = 0
        self.list_calls = 0

    def time(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def status(self) -> str:
        return self.outcome if self.now >= T0 + self.finish_after else "running"

    def job(self) -> dict[str, Any]:
        created = datetime.fromtimestamp(T0, tz=UTC)
        done = self.status() != "running"
        return {
            "jobId": "ab12cd3",
            "endpoint": "/api/orders/snapshot",
            "creationTime": format_datetime(created),
            "completionTime": format_datetime(created + timedelta(seconds=self.finish_after)) if done else None,
            "status": self.status(),
            "validUntil": format_datetime(created + timedelta(days=1)) if done else None,
        }

    def handle(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path == "/api/orders/snapshot":
            return self.reply(202, {"jobId": "ab12cd3"})
        if path == "/api/system/jobs":
            self.list_calls += 1
            since = parse_datetime(request.url.params["creationTimeFrom"])
            assert since is not None and since.timestamp() <= T0
            jobs = [self.job()] if self.listed else []
            other = [{**self.job(), "jobId": f"zz{i}", "status": "completed"} for i in range(3)]
            items = other + jobs
            paginator = {"totalCount": len(items), "page": 1, "pageCount": 1, "itemsOnPage": len(items)}
            return self.reply(200, {"jobs": items, "paginator": paginator})
        if path == "/api/system/jobs/ab12cd3":
            self.detail_calls += 1
            if self.status() == "running":
                self.unfinished_detail_calls += 1
                if self.unfinished_detail_calls > 10:
                    err = {
                        "errorCode": "job-detail-try-counter-exceeded-limit",
                        "message": "x",
                        "instance": "x",
                    }
                    return httpx.Response(403, content=orjson.dumps({"data": None, "errors": [err]}))
            job = self.job()
            if self.status() == "completed":
                job["resultUrl"] = "https://shop.example/api-results/ab12cd3-x.json"
            job["log"] = None if self.status() == "completed" else "Export failed: out of memory"
            return self.reply(200, {"job": job})
        raise AssertionError(path)

    def reply(self, status: int, data: Any) -> httpx.Response:
        return httpx.Response(status, content=orjson.dumps({"data": data, "errors": None}))

    def client(self) -> ShoptetClient:
        return ShoptetClient(
            "https://api.test",
            "tok-" + "x" * 40,
            clock=self.time,
            sleep=self.sleep,
            rng=random.Random(0),
            transport=httpx.MockTransport(self.handle),
        )


def test_slow_job_detail_called_once() -> None:
    svc = JobService(finish_after=2900)
    with svc.client() as client:
        job_id = client.request_snapshot("orders", {"changeTimeFrom": datetime(2026, 9, 1, tzinfo=UTC)})
        job = client.wait_for_job(job_id)
    assert job.status == "completed" and job.result_url and job.valid_until is not None
    assert job.valid_until.tzinfo is not None
    assert svc.detail_calls == 1 and svc.unfinished_detail_calls == 0
    assert svc.sleeps[:6] == [2, 4, 8, 16, 32, 60] and max(svc.sleeps) == 60
    assert svc.now - T0 < 2900 + 60 + 1


def test_unlisted_job_detail_polls_bounded() -> None:
    svc = JobService(finish_after=10_000, listed=False)
    with svc.client() as client, pytest.raises(e.JobDeadlineExceededError) as info:
        client.wait_for_job("ab12cd3", deadline_seconds=3600)
    assert svc.detail_calls == 8 and info.value.job_id == "ab12cd3"
    assert svc.now == pytest.approx(T0 + 3600)


def test_unlisted_job_found_by_detail() -> None:
    svc = JobService(finish_after=20, listed=False)
    with svc.client() as client:
        assert client.wait_for_job("ab12cd3").status == "completed"
    assert svc.unfinished_detail_calls <= 8


@pytest.mark.parametrize("outcome", ["failed", "killed", "expired"])
def test_failed_jobs_raise_with_log(outcome: str) -> None:
    svc = JobService(finish_after=30, outcome=outcome)
    with svc.client() as client, pytest.raises(e.JobFailedError) as info:
        client.wait_for_job("ab12cd3")
    assert info.value.status == outcome and info.value.log == "Export failed: out of memory"
    assert not info.value.transient and "out of memory" in str(info.value)


def test_deadline() -> None:
    svc = JobService(finish_after=5000)
    with svc.client() as client, pytest.raises(e.JobDeadlineExceededError) as info:
        client.wait_for_job("ab12cd3", deadline_seconds=600)
    assert info.value.last_status == "running" and svc.detail_calls == 0
    assert svc.now == pytest.approx(T0 + 600)


def test_snapshot_entity_validation() -> None:
    svc = JobService(finish_after=1)
    with svc.client() as client, pytest.raises(ValueError):
        client.request_snapshot("invoices", {})


# --- §1.8 / §2.5: the detail-poll budget is per job, across calls (task retries, other processes) ------


def test_poll_budget_survives_a_retried_wait() -> None:
    """A retried wait (same job) must not get a fresh budget: 8 + 8 blind polls would hit the 403."""
    svc = JobService(finish_after=100_000, listed=False)
    with svc.client() as client:
        for _ in range(2):  # the first wait, then the task's retry
            with pytest.raises(e.JobDeadlineExceededError):
                client.wait_for_job("ab12cd3", deadline_seconds=3600)
    assert svc.detail_calls == 8 and svc.unfinished_detail_calls <= 10


def test_injected_counter_is_shared_by_clients() -> None:
    from shoptet.snapshots import LocalPollCounter

    svc = JobService(finish_after=100_000, listed=False)
    counter = LocalPollCounter()
    for _ in range(3):  # e.g. three processes, one persisted counter
        with svc.client() as client, pytest.raises(e.JobDeadlineExceededError):
            client.wait_for_job("ab12cd3", deadline_seconds=600, poll_counter=counter)
    assert svc.detail_calls == 8 and counter.used() == 8


def test_spent_budget_raises_poll_limit_without_an_11th_call() -> None:
    from shoptet.snapshots import MAX_DETAIL_POLLS, LocalPollCounter

    svc = JobService(finish_after=10)
    svc.now = T0 + 20  # the list already shows the job completed
    with svc.client() as client, pytest.raises(e.JobPollLimitError) as info:
        client.wait_for_job("ab12cd3", poll_counter=LocalPollCounter(MAX_DETAIL_POLLS))
    assert svc.detail_calls == 0 and "request the snapshot again" in str(info.value)
    # With 2 polls left, the finished job's detail is read once.
    with svc.client() as client:
        job = client.wait_for_job("ab12cd3", poll_counter=LocalPollCounter(MAX_DETAIL_POLLS - 2))
    assert job.status == "completed" and svc.detail_calls == 1


def test_counter_counts_before_the_call() -> None:
    """A poll is recorded before it is sent, so a crash mid-call still counts it."""
    from shoptet.snapshots import LocalPollCounter

    seen: list[int] = []

    class Recording(LocalPollCounter):
        def add(self) -> None:
            super().add()
            seen.append(svc.detail_calls)

    svc = JobService(finish_after=10)
    svc.now = T0 + 20
    with svc.client() as client:
        client.wait_for_job("ab12cd3", poll_counter=Recording())
    assert seen == [0] and svc.detail_calls == 1
