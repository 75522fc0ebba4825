"""Snapshot flows under prefect_test_harness, with the sandbox as the Shoptet API (no real sleeping)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from db.connection import libpq_url
from flows import runtime
from flows.entities import Entity
from flows.failed import retry_failed_snapshots
from flows.snapshot import SnapshotFailed, import_snapshot
from shoptet.client import ShoptetClient

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module", autouse=True)
def harness(prefect_harness):
    yield


@pytest.fixture
def hub(db_url, sandbox, monkeypatch, no_retry_waits):
    """Flows pointed at this test's database and the sandbox; task retries without real waiting."""

    def client() -> ShoptetClient:
        return ShoptetClient(sandbox.base_url, sandbox.token, clock=sandbox.clock.time, sleep=sandbox.clock.sleep)

    with runtime.override(database_url=db_url, client_factory=client, webhook_url="https://hub.example/hook"):
        yield sandbox


def q(db_url: str, sql: str, *args):
    with psycopg.connect(libpq_url(db_url)) as c:
        return c.execute(sql, args).fetchall()


def test_full_import_then_rerun_unchanged(hub, db_url):
    first = import_snapshot(Entity.orders)
    assert first["inserted"] == 300 and first["rejected"] == 0
    assert q(db_url, "SELECT count(*) FROM orders")[0][0] == 300
    again = import_snapshot(Entity.orders)
    assert (again["inserted"], again["updated"], again["unchanged"]) == (0, 0, 300)
    runs = q(db_url, "SELECT status, job_id IS NOT NULL, source FROM snapshot_runs ORDER BY id")
    assert runs == [("succeeded", True, "api"), ("succeeded", True, "api")]


def test_incremental_import_only_upserts(hub, db_url):
    import_snapshot(Entity.customers)
    since = hub.clock.now()
    hub.clock.sleep(60)
    guid = hub.state.store.keys("customers")[0]
    hub.state.store.update_customer(guid, remark="changed")
    r = import_snapshot(Entity.customers, changed_since=since)
    assert (r["lines"], r["updated"], r["deleted"]) == (1, 1, 0)


def test_5xx_then_success_is_retried_by_the_task(hub, db_url):
    # More 503s than the client's own retries (1 call + 4 retries): the Prefect task retry recovers.
    hub.state.faults.fail_next_n = 7
    r = import_snapshot(Entity.products)
    assert r["inserted"] > 0
    assert q(db_url, "SELECT count(*) FROM failed_snapshots")[0][0] == 0


def test_exhausted_retries_record_a_failed_snapshot_that_the_retry_flow_recovers(hub, db_url):
    hub.state.faults.error_5xx_rate = 1.0
    with pytest.raises(SnapshotFailed) as info:
        import_snapshot(Entity.customers)
    assert info.value.failed_snapshot_id is not None
    (fs,) = q(db_url, "SELECT entity, stage, error_class, status, attempts FROM failed_snapshots")
    assert fs == ("customers", "webhook", "ServerError", "pending", 0)

    hub.state.faults.error_5xx_rate = 0.0
    outcomes = retry_failed_snapshots()
    assert [o["status"] for o in outcomes] == ["recovered"]
    (row,) = q(db_url, "SELECT status, attempts, recovered_run_id FROM failed_snapshots")
    assert row[0] == "recovered" and row[1] == 1
    assert q(db_url, "SELECT status FROM snapshot_runs WHERE id = %s", row[2]) == [("succeeded",)]
    assert q(db_url, "SELECT count(*) FROM customers")[0][0] > 0


def test_expired_result_is_requested_again(hub, db_url):
    hub.state.faults.expire_results = True
    with pytest.raises(SnapshotFailed):
        import_snapshot(Entity.orders)
    (old_job, stage, err) = q(db_url, "SELECT job_id, stage, error_class FROM failed_snapshots")[0]
    assert (stage, err) == ("download", "ResultExpiredError")

    hub.state.faults.expire_results = False
    assert [o["status"] for o in retry_failed_snapshots()] == ["recovered"]
    (run_id,) = q(db_url, "SELECT recovered_run_id FROM failed_snapshots")[0]
    (new_job,) = q(db_url, "SELECT job_id FROM snapshot_runs WHERE id = %s", run_id)[0]
    assert new_job != old_job
    assert q(db_url, "SELECT count(*) FROM orders")[0][0] == 300


def test_truncated_download_fails_and_is_requested_again(hub, db_url):
    # A truncated file is caught at download (gzip checked to its end), never half-applied.
    hub.state.faults.truncate_gzip = True
    with pytest.raises(SnapshotFailed):
        import_snapshot(Entity.orders)
    (stage, err) = q(db_url, "SELECT stage, error_class FROM failed_snapshots")[0]
    assert (stage, err) == ("download", "CorruptResultError")
    hub.state.faults.truncate_gzip = False
    assert [o["status"] for o in retry_failed_snapshots()] == ["recovered"]


def test_over_threshold_rejects_fail_and_retry_requests_a_new_file(hub, db_url, monkeypatch):
    monkeypatch.setenv("HUB_REJECT_THRESHOLD", "0.001")
    from flows.config import get_config

    get_config.cache_clear()
    try:
        hub.state.faults.malformed_line_at = 5
        with pytest.raises(SnapshotFailed):
            import_snapshot(Entity.orders)
        (stage, err, job) = q(db_url, "SELECT stage, error_class, job_id FROM failed_snapshots")[0]
        assert (stage, err) == ("apply", "TooManyRejectsError")
        assert q(db_url, "SELECT count(*) FROM orders")[0][0] == 0
        assert q(db_url, "SELECT count(*) FROM snapshot_rejects")[0][0] == 1
        hub.state.faults.malformed_line_at = None
        assert [o["status"] for o in retry_failed_snapshots()] == ["recovered"]
        (run_id,) = q(db_url, "SELECT recovered_run_id FROM failed_snapshots")[0]
        assert q(db_url, "SELECT job_id FROM snapshot_runs WHERE id = %s", run_id)[0][0] != job
    finally:
        get_config.cache_clear()


def test_gives_up_after_three_retry_attempts(hub, db_url):
    hub.state.faults.job_outcome = "killed"
    with pytest.raises(SnapshotFailed):
        import_snapshot(Entity.products)
    (err,) = q(db_url, "SELECT error_class FROM failed_snapshots")[0]
    assert err == "JobFailedError"
    now = datetime.now(UTC)  # failed_snapshots times are wall-clock times, not the sandbox's
    statuses = []
    for attempt in range(3):
        outcomes = retry_failed_snapshots(now=now + timedelta(hours=2 * (attempt + 1)))
        statuses.append(outcomes[0]["status"])
    assert statuses == ["pending", "pending", "gave_up"]
    (status, attempts, msg) = q(db_url, "SELECT status, attempts, error_message FROM failed_snapshots")[0]
    assert (status, attempts) == ("gave_up", 3) and msg
    assert retry_failed_snapshots(now=now + timedelta(days=1)) == []


def test_reject_threshold_setting_wins_over_env(hub, db_url):
    from db.settings.registry import get_settings_service

    get_settings_service(db_url, "public").set("reject_threshold", 0.001)
    hub.state.faults.malformed_line_at = 3
    with pytest.raises(SnapshotFailed, match="TooManyRejectsError"):
        import_snapshot(Entity.orders)
    get_settings_service(db_url, "public").set("reject_threshold", 0.05)
    assert import_snapshot(Entity.orders)["rejected"] == 1


# --- issue 8: §1.8 poll counts persisted, §2.1 shared slots wired, §2.2 add-on tokens -----------------


def test_detail_polls_are_counted_on_the_run(hub, db_url):
    hub.state.faults.jobs_listed = False  # the list lags: the job's detail is polled (bounded)
    import_snapshot(Entity.orders)
    ((job_id, polls),) = q(db_url, "SELECT job_id, job_detail_polls FROM snapshot_runs")
    sandbox_unfinished = hub.state.jobs.get(job_id).polls
    assert polls == sandbox_unfinished + 1 and 1 < polls <= 8  # + the one that saw it completed


def test_flows_hold_the_token_cap_in_the_database(hub, db_url):
    from db.api_slots import AdvisorySlots
    from flows.config import get_config
    from flows.shoptet_api import make_client

    with make_client(get_config(), db_url) as client:
        assert isinstance(client.slot_provider, AdvisorySlots)
        client.get("/api/orders", {"itemsPerPage": 1})
        assert hub.token not in client.token_fingerprint  # lock keys hash a fingerprint, never the token


def test_addon_token_expiring_mid_sync_is_refreshed(hub, db_url):
    from shoptet.oauth import AddonTokenSource

    hub.state.access_token_ttl = 20.0  # sandbox seconds: several tokens expire during one sync
    source = AddonTokenSource(hub.base_url, hub.state.oauth_token, clock=hub.clock.time, refresh_margin=5)

    def client() -> ShoptetClient:
        return ShoptetClient(hub.base_url, token_source=source, clock=hub.clock.time, sleep=hub.clock.sleep)

    with runtime.override(client_factory=client):
        assert import_snapshot(Entity.orders)["inserted"] == 300
    assert source.fetches >= 2 and hub.state.access_tokens_issued == source.fetches


def test_addon_settings_build_a_refreshing_client(hub, db_url, monkeypatch):
    from flows.config import get_config
    from flows.shoptet_api import make_client

    for k, v in {
        "HUB_SHOPTET_BASE_URL": hub.base_url,
        "HUB_SHOPTET_TOKEN_KIND": "addon",
        "HUB_SHOPTET_OAUTH_TOKEN": hub.state.oauth_token,
        "HUB_SHOPTET_OAUTH_URL": hub.base_url,
    }.items():
        monkeypatch.setenv(k, v)
    get_config.cache_clear()
    saved = runtime._client_factory
    runtime._client_factory = None  # the real construction path, not the test override
    try:
        with make_client(get_config(), db_url) as client:
            assert client.token_kind == "access" and client.get("/api/orders", {"itemsPerPage": 1})["orders"]
    finally:
        runtime._client_factory = saved
        get_config.cache_clear()
    assert hub.state.access_tokens_issued == 1
    assert hub.state.oauth_token not in repr(get_config())


def test_a_retried_job_from_before_an_erasure_never_brings_the_person_back(hub, db_url):
    """review M1: the job was requested before `hub forget`, its download failed, the retry reuses it."""
    from db.forget import ERASED_HASH, forget
    from shoptet.sandbox.state import PathFault

    import_snapshot(Entity.orders)
    hub.state.faults.path_faults.append(PathFault("/api-results/", count=100, status=503))
    with pytest.raises(SnapshotFailed):
        import_snapshot(Entity.orders)  # job 2: created now, before the erasure
    hub.state.faults.path_faults.clear()
    ((email, n),) = q(db_url, "SELECT lower(email), count(*) FROM orders WHERE email IS NOT NULL GROUP BY 1 "
                              "ORDER BY 2 DESC, 1 LIMIT 1")  # fmt: skip
    erased = forget(db_url, email).rows["orders"]
    assert erased >= n
    assert [o["status"] for o in retry_failed_snapshots()] == ["recovered"]
    jobs = [j for j in hub.state.jobs.all() if j.endpoint == "/api/orders/snapshot"]
    assert len(jobs) == 2  # the pre-erasure job's still valid result was downloaded and applied
    (run,) = q(db_url, "SELECT updated, skipped_older FROM snapshot_runs WHERE id = "
                       "(SELECT recovered_run_id FROM failed_snapshots)")  # fmt: skip
    assert run == (0, erased)
    assert q(db_url, "SELECT count(*) FROM orders WHERE lower(email) = %s", email) == [(0,)]
    assert q(db_url, "SELECT count(*) FROM orders WHERE content_hash = %s", ERASED_HASH) == [(erased,)]


def test_the_result_url_is_never_a_persisted_task_result(hub, db_url, tmp_path):
    """previous review 6: Job.result_url (a bearer URL to the shop's data) stays out of Prefect's results."""
    from prefect.settings import PREFECT_LOCAL_STORAGE_PATH, PREFECT_RESULTS_PERSIST_BY_DEFAULT, temporary_settings

    store = tmp_path / "results"
    with temporary_settings({PREFECT_RESULTS_PERSIST_BY_DEFAULT: True, PREFECT_LOCAL_STORAGE_PATH: store}):
        assert import_snapshot(Entity.customers)["inserted"] > 0
    written = [_decoded(p.read_bytes()) for p in store.rglob("*") if p.is_file()]
    assert written  # persistence was on: other tasks' results are there
    assert not [b[:300] for b in written if b"api-results" in b or b"result_url" in b]


def _decoded(record: bytes) -> bytes:
    """A persisted result record's value as pickled (it is stored base64-encoded inside JSON)."""
    import base64
    import json

    try:
        return base64.b64decode(json.loads(record).get("result") or b"")  # not the metadata: it names tmp_path
    except ValueError:  # not a JSON result record
        return record
