"""Faults on the Shoptet side of a snapshot: 5xx bursts, timeouts, 429 storms, failing and stuck jobs,
expired results, the detail-poll cap, two processes sharing one token.

Each fault is either recovered within retries or recorded in ``failed_snapshots`` with its reason and
then recovered by the retry flow; afterwards the mirror is compared with the sandbox's own store (every
order code with its number of items): 0 rows lost, 0 duplicated. Nothing sleeps for real except the few
timeouts (a sandbox answer held ~1 s past a 0.4 s client timeout): the sandbox runs on a manual clock
that the client's injected sleep advances.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime as http_date
from pathlib import Path

import psycopg
import pytest
from prefect.testing.utilities import prefect_test_harness

from db.connection import libpq_url
from flows import runtime
from flows.config import get_config
from flows.entities import Entity
from flows.failed import retry_failed_snapshots
from flows.snapshot import SnapshotFailed, import_snapshot
from shoptet.client import ShoptetClient
from shoptet.sandbox import REFERENCE, ManualClock
from shoptet.sandbox.server import SandboxServer
from shoptet.sandbox.state import PathFault

# Shoptet-side faults: the same on every PostgreSQL version, so CI runs them in its first leg only.
pytestmark = [pytest.mark.integration, pytest.mark.slow]

ORDERS = 120
SNAPSHOT = "/api/orders/snapshot"


@pytest.fixture(scope="module", autouse=True)
def harness():
    with prefect_test_harness(server_startup_timeout=60):
        yield


@pytest.fixture
def sandbox():
    clock = ManualClock(REFERENCE + timedelta(days=1))
    with SandboxServer(orders=ORDERS, seed=11, clock=clock, job_seconds=30, reference=REFERENCE) as sb:
        sb.state.limits.enabled = False  # switched on by the tests that exercise them
        yield sb


class Hub:
    """The flows pointed at this test's database and the sandbox; ``timeout`` is the client's."""

    def __init__(self, sb: SandboxServer, db_url: str) -> None:
        self.sb, self.db_url, self.timeout = sb, db_url, 30.0

    @property
    def state(self):
        return self.sb.state

    def client(self) -> ShoptetClient:
        sb = self.sb
        return ShoptetClient(sb.base_url, sb.token, timeout=self.timeout, clock=sb.clock.time, sleep=sb.clock.sleep)

    def q(self, sql: str, *args):
        with psycopg.connect(libpq_url(self.db_url)) as c:
            return c.execute(sql, args).fetchall()

    def jobs(self, endpoint: str = SNAPSHOT) -> list:
        return [j for j in self.state.jobs.all() if j.endpoint == endpoint]

    def assert_mirror_equals_shop(self) -> None:
        """Every order of the shop stored once with all its items; nothing else (0 lost, 0 duplicated)."""
        shop = {}
        for rec in self.state.store.records("orders"):
            order = rec.data()
            shop[order["code"]] = len(order["items"])
        stored = dict(
            self.q("SELECT o.code, (SELECT count(*) FROM order_items i WHERE i.order_code = o.code) FROM orders o")
        )
        assert len(shop) == ORDERS
        assert stored == shop
        assert self.q("SELECT count(*) FROM order_items")[0][0] == sum(shop.values())

    def failed(self) -> list[tuple]:
        return self.q("SELECT stage, error_class, status, attempts FROM failed_snapshots ORDER BY id")

    def detail_polls_ok(self) -> None:
        """No job's detail was polled more than 10 times, by our count and by the sandbox's."""
        assert all(j.polls <= 10 for j in self.state.jobs.all())
        per_job = self.q("SELECT job_id, sum(job_detail_polls) FROM snapshot_runs GROUP BY job_id")
        assert all(n <= 10 for _, n in per_job)


@pytest.fixture
def hub(db_url, sandbox, monkeypatch, tmp_path, no_retry_waits):
    monkeypatch.setenv("HUB_DOWNLOAD_DIR", str(tmp_path / "downloads"))
    get_config.cache_clear()
    h = Hub(sandbox, db_url)
    with runtime.override(database_url=db_url, client_factory=h.client, webhook_url="https://hub.example/hook"):
        yield h
    get_config.cache_clear()


def set_env(monkeypatch, **values: str) -> None:
    for k, v in values.items():
        monkeypatch.setenv(k, v)
    get_config.cache_clear()


# --- §3.1: 5xx bursts and timeouts during request, polling and download ---------------------------------


@pytest.mark.parametrize(
    "fault",
    [
        PathFault(SNAPSHOT, count=7, status=503),  # more than the client's own 1 + 4 attempts
        PathFault(SNAPSHOT, count=2, status=502, after=True),  # the job was queued, the answer lost
        PathFault(SNAPSHOT, count=1, status=0, after=True, delay=1.0),  # the answer came after the timeout
        PathFault(SNAPSHOT, count=1, status=0, delay=1.0),  # the request itself hung
    ],
    ids=["5xx-burst", "5xx-after-queueing", "timeout-after-queueing", "timeout"],
)
def test_request_5xx_and_timeouts(hub, fault) -> None:
    hub.timeout = 0.4
    hub.state.faults.path_faults.append(fault)
    counters = import_snapshot(Entity.orders)
    assert counters["inserted"] == ORDERS and hub.failed() == []
    hub.assert_mirror_equals_shop()
    if fault.after:  # Shoptet queued a job on the lost answer: it was adopted, not requested again
        assert len(hub.jobs()) == 1
    assert hub.q("SELECT count(DISTINCT job_id) FROM snapshot_runs") == [(1,)]


@pytest.mark.parametrize(
    "fault",
    [
        PathFault("/api/system/jobs", exact=True, count=12, status=503),  # list: beyond the client's retries
        PathFault("/api/system/jobs/", count=6, status=500),  # detail of the finished job
        PathFault("/api/system/jobs", exact=True, count=2, status=0, delay=1.0),  # list timeouts
    ],
    ids=["list-5xx-burst", "detail-5xx-burst", "list-timeouts"],
)
def test_polling_5xx_and_timeouts(hub, fault) -> None:
    hub.timeout = 0.4
    hub.state.faults.path_faults.append(fault)
    assert import_snapshot(Entity.orders)["inserted"] == ORDERS
    assert hub.failed() == [] and len(hub.jobs()) == 1
    hub.assert_mirror_equals_shop()
    hub.detail_polls_ok()


@pytest.mark.parametrize(
    "fault",
    [
        PathFault("/api-results/", count=3, status=503),
        PathFault("/api-results/", count=2, status=0, delay=1.0),
    ],
    ids=["5xx-burst", "timeouts"],
)
def test_download_5xx_and_timeouts(hub, fault) -> None:
    hub.timeout = 0.4
    hub.state.faults.path_faults.append(fault)
    assert import_snapshot(Entity.orders)["inserted"] == ORDERS
    assert hub.failed() == [] and len(hub.jobs()) == 1
    hub.assert_mirror_equals_shop()
    assert list((Path(get_config().scratch_dir)).glob("*")) == []  # no partial file left behind


def test_5xx_beyond_every_retry_is_recorded_then_recovered(hub) -> None:
    hub.state.faults.path_faults.append(PathFault("/api-results/", count=100, status=503))
    with pytest.raises(SnapshotFailed):
        import_snapshot(Entity.orders)
    assert hub.failed() == [("download", "ServerError", "pending", 0)]
    assert hub.q("SELECT count(*) FROM orders") == [(0,)]
    hub.state.faults.path_faults.clear()
    assert [o["status"] for o in retry_failed_snapshots()] == ["recovered"]
    assert len(hub.jobs()) == 1  # the still valid result of the same job was downloaded again
    hub.assert_mirror_equals_shop()


# --- §3.2: 429 storms (Retry-After as an HTTP-date) and the bucket filling up ---------------------------


def test_429_storm_with_http_date(hub) -> None:
    hub.state.faults.storm_429 = 25  # more than one call's 8 retries: a task retry continues
    assert import_snapshot(Entity.orders)["inserted"] == ORDERS
    assert hub.state.faults.storm_429 == 0 and hub.failed() == []
    hub.assert_mirror_equals_shop()


def test_long_retry_after_on_the_job_list_is_waited_out(hub) -> None:
    until = datetime.fromtimestamp(hub.sb.clock.time() + 600, tz=UTC)
    hub.state.faults.path_faults.append(
        PathFault("/api/system/jobs", exact=True, status=429, retry_after=http_date(until, usegmt=True))
    )
    assert import_snapshot(Entity.orders)["inserted"] == ORDERS
    assert hub.sb.clock.time() >= until.timestamp()  # waited the whole 10 minutes (no early retry)
    hub.assert_mirror_equals_shop()


def test_bucket_filling_up(hub) -> None:
    hub.state.limits.enabled = True
    hub.state.limits.bytes_per_drop = 100  # every response costs many drops: the bucket fills
    for _ in range(3):
        import_snapshot(Entity.orders)
    assert hub.failed() == []
    hub.assert_mirror_equals_shop()


# --- §3.3: failed, killed, expired jobs; a job that never finishes --------------------------------------


@pytest.mark.parametrize("outcome", ["failed", "killed", "expired"])
def test_failed_jobs_are_recorded_then_requested_again(hub, monkeypatch, outcome) -> None:
    set_env(monkeypatch, HUB_JOB_DEADLINE_SECONDS=str(4 * 3600))  # 'failed' shows only after 3 h
    hub.state.faults.job_outcome = outcome
    with pytest.raises(SnapshotFailed):
        import_snapshot(Entity.orders)
    assert hub.failed() == [("wait", "JobFailedError", "pending", 0)]
    assert hub.q("SELECT count(*) FROM orders") == [(0,)]
    hub.state.faults.job_outcome = "completed"
    assert [o["status"] for o in retry_failed_snapshots()] == ["recovered"]
    assert len(hub.jobs()) == 2  # the failed job and the new one
    hub.assert_mirror_equals_shop()
    hub.detail_polls_ok()


def test_job_that_never_finishes_gives_up_and_is_recorded(hub, monkeypatch) -> None:
    set_env(monkeypatch, HUB_JOB_DEADLINE_SECONDS="1800")
    hub.state.faults.job_outcome = "never"
    started = hub.sb.clock.time()
    with pytest.raises(SnapshotFailed):
        import_snapshot(Entity.orders)
    assert hub.sb.clock.time() - started < 1800 + 120  # a bounded wait, not forever
    (row,) = hub.q("SELECT stage, error_class, status, error_message FROM failed_snapshots")
    assert row[:3] == ("wait", "JobDeadlineExceededError", "pending") and "not finished" in row[3]
    hub.state.faults.job_outcome = "completed"
    assert [o["status"] for o in retry_failed_snapshots()] == ["recovered"]
    hub.assert_mirror_equals_shop()
    hub.detail_polls_ok()


# --- §3.4: the result expired before the download -----------------------------------------------------


def test_expired_result_is_requested_again_by_the_retry_flow(hub) -> None:
    hub.state.faults.expire_results = True
    with pytest.raises(SnapshotFailed):
        import_snapshot(Entity.orders)
    assert hub.failed() == [("download", "ResultExpiredError", "pending", 0)]
    (old_job,) = hub.q("SELECT job_id FROM failed_snapshots")[0]
    hub.state.faults.expire_results = False
    assert [o["status"] for o in retry_failed_snapshots()] == ["recovered"]
    (new_job,) = hub.q("SELECT r.job_id FROM failed_snapshots f JOIN snapshot_runs r ON r.id = f.recovered_run_id")[0]
    assert new_job != old_job and len(hub.jobs()) == 2
    hub.assert_mirror_equals_shop()


# --- §1.8: the 10-poll cap across task retries, and JobPollLimitError in the retry flow -----------------


def test_detail_poll_budget_survives_task_retries(hub, monkeypatch) -> None:
    """The list does not show the job (lag); after 8 blind detail polls the list fails past the client's
    retries, so the wait task is retried. The retry must not poll the detail 8 more times (the old
    budget was a local: 16 polls, the 11th a 403)."""
    set_env(monkeypatch, HUB_JOB_DEADLINE_SECONDS="900")
    hub.state.faults.jobs_listed = False
    hub.state.faults.job_outcome = "never"
    hub.state.faults.path_faults.append(
        PathFault("/api/system/jobs", exact=True, skip=9, count=5, status=503)  # 10th list call x 5
    )
    with pytest.raises(SnapshotFailed):
        import_snapshot(Entity.orders)
    assert hub.state.faults.path_faults[0].count == 0  # the list did fail: the wait task was retried
    assert hub.failed()[0][:2] == ("wait", "JobDeadlineExceededError")  # not JobPollLimitError
    (job,) = hub.jobs()
    assert job.polls == 8
    assert hub.q("SELECT job_detail_polls FROM snapshot_runs") == [(8,)]
    hub.detail_polls_ok()


def test_poll_limit_failure_is_requested_again(hub) -> None:
    """A failed snapshot whose job's polls are spent is not waited for again: a new job is requested."""
    import_snapshot(Entity.customers)  # registers the webhook; a run to hang the old job on
    with hub.client() as c:
        old = c.request_snapshot("orders", {})
    with psycopg.connect(libpq_url(hub.db_url)) as conn:
        conn.execute(
            """INSERT INTO snapshot_runs (entity, source, "full", filters, job_id, status, job_detail_polls)
               VALUES ('orders', 'api', true, '{"include": "notes"}', %s, 'failed', 10)""",
            (old,),
        )
        conn.execute(
            """INSERT INTO failed_snapshots (entity, filters, "full", job_id, stage, error_class, error_message,
                   attempts, next_attempt_at, status)
               VALUES ('orders', '{"include": "notes"}', true, %s, 'wait', 'JobPollLimitError', 'x', 0, now(),
                       'pending')""",
            (old,),
        )
    assert [o["status"] for o in retry_failed_snapshots()] == ["recovered"]
    assert hub.q("SELECT count(*) FROM snapshot_runs WHERE job_id = %s", old) == [(1,)]  # not reused
    assert hub.state.jobs.get(old).polls == 0
    hub.assert_mirror_equals_shop()


# --- §1.10: downloads left behind by a killed run are swept --------------------------------------------


def test_old_downloads_are_swept_at_the_start_of_a_snapshot_flow(hub, caplog) -> None:
    import os
    import time

    folder = Path(get_config().scratch_dir)
    folder.mkdir(parents=True)
    old = time.time() - 2 * 86400
    left = [folder / "shoptet-ab12cd3-q1w2e3r4.part", folder / "shoptet-zz99yy8-a1s2d3f4.jsonl.gz"]
    kept = [folder / "shoptet-fresh00-z9x8c7v6.part", folder / "operator-notes.txt"]
    for p in left + kept:
        p.write_bytes(b"\x1f\x8b" + b"0" * 1000)
    for p in left + kept[1:]:
        os.utime(p, (old, old))
    import_snapshot(Entity.orders)
    assert not any(p.exists() for p in left) and all(p.exists() for p in kept)


# --- §2.1: the 3-connections-per-token cap across two processes ------------------------------------------

WORKER = textwrap.dedent(
    """
    import sys, threading
    from shoptet.client import ShoptetClient
    base, token, db_url, shared = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1"
    client = ShoptetClient(base, token, max_429_retries=50)
    if shared:
        from db.api_slots import AdvisorySlots
        client.use_slot_provider(AdvisorySlots(db_url))
    errors = []
    def work():
        try:
            for _ in range(8):
                client.get("/api/orders", {"itemsPerPage": 1})
        except BaseException as exc:
            errors.append(repr(exc))
    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads: t.start()
    for t in threads: t.join()
    print("errors:", errors)
    sys.exit(1 if errors else 0)
    """
)


def _two_processes(sb: SandboxServer, db_url: str, shared: bool) -> int:
    sb.state.rate.reset()
    args = [sys.executable, "-c", WORKER, sb.base_url, sb.token, db_url, "1" if shared else "0"]
    root = Path(__file__).resolve().parents[2]
    procs = [
        subprocess.Popen(args, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)
    ]
    for p in procs:
        out, _ = p.communicate(timeout=120)
        assert p.returncode == 0, out
    return sb.state.rate.peak_attempted[sb.token]


def test_three_connections_per_token_across_processes(db_url) -> None:
    with SandboxServer(orders=20, seed=3, job_seconds=1) as sb:
        sb.state.limits.max_concurrent = 1000  # measure, do not refuse: count what would have been 429s
        sb.state.faults.slow_seconds = 0.03  # real seconds: requests overlap
        assert _two_processes(sb, db_url, shared=True) <= 3
        # Control: without the shared slots each process keeps only its own 3.
        assert _two_processes(sb, db_url, shared=False) > 3


def test_slots_wait_then_give_up_with_a_transient_error(db_url) -> None:
    from contextlib import ExitStack

    from db.api_slots import AdvisorySlots, SlotWaitTimeout
    from flows.retrying import is_transient

    holder, waiter = AdvisorySlots(db_url), AdvisorySlots(db_url, max_wait=0.3)
    try:
        with ExitStack() as stack:
            for _ in range(3):
                stack.enter_context(holder.slot("fp-1"))
            with waiter.slot("fp-2"):  # another token's slots are free
                pass
            with pytest.raises(SlotWaitTimeout) as info:
                with waiter.slot("fp-1"):
                    pass
            assert is_transient(info.value) and waiter.waits == 1
        with waiter.slot("fp-1"):  # freed when the holder left
            pass
    finally:
        holder.close()
        waiter.close()
