"""Webhooks, snapshot jobs, their lifecycle on the sandbox clock, and result files."""

from __future__ import annotations

import gzip
import hashlib
import hmac
import re
import threading
import zlib
from http.server import BaseHTTPRequestHandler, HTTPServer

import httpx
import orjson
import pytest

from shoptet.sandbox.clock import ManualClock
from shoptet.sandbox.formats import REFERENCE, parse_dt
from shoptet.sandbox.server import SandboxServer

HOOK = {"data": [{"event": "job:finished", "url": "https://example.com/hooks/shoptet"}]}


@pytest.fixture(scope="module")
def sb():
    with SandboxServer(orders=600, seed=5, clock=ManualClock(REFERENCE), job_seconds=2.0) as server:
        yield server


@pytest.fixture(autouse=True)
def _reset(sb):
    yield
    sb.state.faults.__init__()
    sb.state.limits.__init__()
    sb.state.rate.reset()
    sb.state.reset_write_locks()
    sb.state.webhooks.clear()
    sb.state.send_webhooks = False


@pytest.fixture
def api(sb):
    with httpx.Client(base_url=sb.base_url, headers=sb.headers) as client:
        yield client


@pytest.fixture
def hooked(api):
    assert api.post("/api/webhooks", json=HOOK).status_code == 201
    return api


def err(resp: httpx.Response) -> dict:
    return resp.json()["errors"][0]


def run_job(api, sb, path: str, **params) -> dict:
    r = api.get(path, params=params)
    assert r.status_code == 202, r.text
    job_id = r.json()["data"]["jobId"]
    sb.clock.advance(sb.state.job_seconds + 0.5)
    job = api.get(f"/api/system/jobs/{job_id}").json()["data"]["job"]
    assert job["status"] == "completed", job
    return job


def download(url: str) -> list[dict]:
    r = httpx.get(url)  # no auth headers on purpose
    assert r.status_code == 200
    return [orjson.loads(line) for line in gzip.decompress(r.content).splitlines() if line]


# ---------------------------------------------------------------- webhooks


def test_webhook_register_list_duplicate_delete(api, sb):
    r = api.post(
        "/api/webhooks",
        json={"data": [{"event": "job:finished", "url": "https://a.example/h", "sendPayload": None}]},
    )
    assert r.status_code == 201
    hook = r.json()["data"]["webhooks"][0]
    assert set(hook) == {"id", "event", "url", "created", "updated", "sendPayload"}
    assert hook["event"] == "job:finished" and isinstance(hook["id"], int)
    dup = api.post("/api/webhooks", json={"data": [{"event": "job:finished", "url": "https://b.example/h"}]})
    assert dup.status_code == 422
    assert err(dup)["errorCode"] == "webhook-exists"
    assert err(dup)["message"] == "Webhook already exists for this event"
    listed = api.get("/api/webhooks").json()["data"]["webhooks"]
    assert [h["id"] for h in listed] == [hook["id"]]
    assert api.delete(f"/api/webhooks/{hook['id']}").status_code == 200
    again = api.delete(f"/api/webhooks/{hook['id']}")  # the identical write within 5 s is locked
    assert again.status_code == 423 and err(again)["errorCode"] == "locked"
    sb.clock.advance(5)
    gone = api.delete(f"/api/webhooks/{hook['id']}")
    assert gone.status_code == 404 and err(gone)["errorCode"] == "webhook-not-found"
    assert api.post("/api/webhooks", json={"data": [{"event": "no:such", "url": "https://x"}]}).status_code == 400


def test_snapshot_needs_webhook(api):
    for entity in ("orders", "customers", "products"):
        r = api.get(f"/api/{entity}/snapshot")
        assert r.status_code == 403
        assert err(r)["errorCode"] == "required-webhook-registration"
        assert err(r)["message"] == "Webhook for job:finished is not registered."


def test_snapshot_filter_validation(hooked):
    r = hooked.get("/api/products/snapshot", params={"productCodes": "P00001-1", "productGuids": "x"})
    assert r.status_code == 400 and err(r)["errorCode"] == "invalid-parameter"
    r = hooked.get("/api/orders/snapshot", params={"orderCodes": ",".join(str(i) for i in range(55))})
    assert r.status_code == 400
    assert err(r)["message"] == 'Invalid "orderCodes" parameter. Expected max. 50 elements, but 55 given.'
    r = hooked.get("/api/orders/snapshot", params={"orderCodes": ""})
    assert r.status_code == 400 and err(r)["errorCode"] == "missing-parameter"
    assert hooked.get("/api/orders/snapshot", params={"bogus": "1"}).status_code == 400
    assert hooked.get("/api/orders/snapshot", params={"include": "nope"}).status_code == 400
    assert hooked.get("/api/customers/snapshot", params={"include": "notes"}).status_code == 400


# ---------------------------------------------------------------- lifecycle


def test_job_lifecycle_and_poll_limit(hooked, sb):
    r = hooked.get("/api/orders/snapshot")
    assert r.status_code == 202
    job_id = r.json()["data"]["jobId"]
    assert re.fullmatch(r"[a-z0-9]{7}", job_id)
    job = hooked.get(f"/api/system/jobs/{job_id}").json()["data"]["job"]
    assert set(job) == {
        "jobId",
        "endpoint",
        "creationTime",
        "completionTime",
        "duration",
        "status",
        "resultUrl",
        "validUntil",
        "log",
        "language",
    }
    assert job["status"] == "pending" and job["endpoint"] == "/api/orders/snapshot"
    assert job["resultUrl"] is None and job["completionTime"] is None
    sb.clock.advance(1)
    for _ in range(8):  # polls 2..9
        assert hooked.get(f"/api/system/jobs/{job_id}").json()["data"]["job"]["status"] == "running"
    assert hooked.get(f"/api/system/jobs/{job_id}").status_code == 200  # 10th
    r = hooked.get(f"/api/system/jobs/{job_id}")  # 11th poll of an unfinished job
    assert r.status_code == 403 and err(r)["errorCode"] == "job-detail-try-counter-exceeded-limit"
    # the job list is not limited and shows progress without resultUrl/log
    listed = hooked.get("/api/system/jobs", params={"status": "running"}).json()["data"]["jobs"]
    item = next(j for j in listed if j["jobId"] == job_id)
    assert "resultUrl" not in item and "log" not in item
    sb.clock.advance(1.5)
    job = hooked.get(f"/api/system/jobs/{job_id}").json()["data"]["job"]  # finished: detail allowed again
    assert job["status"] == "completed"
    assert job["duration"] == "2.000"
    assert parse_dt(job["validUntil"]) - parse_dt(job["completionTime"]) == 24 * 3600
    assert job["resultUrl"].startswith(f"{sb.base_url}/api-results/{job_id}-")
    lines = download(job["resultUrl"])
    assert len(lines) == sb.state.store.count("orders")
    assert "items" in lines[0] and "notes" not in lines[0]
    r = hooked.get("/api/system/jobs/zzzzzzz")
    assert r.status_code == 404 and err(r)["errorCode"] == "job-not-found"


def test_result_honours_filters_and_includes(hooked, sb):
    store = sb.state.store
    codes = store.keys("orders")[100:105]
    job = run_job(hooked, sb, "/api/orders/snapshot", orderCodes=",".join(codes), include="notes,shippingDetails")
    lines = download(job["resultUrl"])
    assert [o["code"] for o in lines] == codes
    assert all("notes" in o and "shippingDetails" in o for o in lines)

    since = "2026-06-01T00:00:00+0200"
    job = run_job(hooked, sb, "/api/orders/snapshot", creationTimeFrom=since, statusId=-3)
    lines = download(job["resultUrl"])
    assert lines and all(o["status"]["id"] == -3 and parse_dt(o["creationTime"]) >= parse_dt(since) for o in lines)
    expected = [r.key for r in store.records("orders") if r.created >= parse_dt(since) and r.idx.status == -3]
    assert [o["code"] for o in lines] == expected

    customers = download(run_job(hooked, sb, "/api/customers/snapshot")["resultUrl"])
    assert len(customers) == store.count("customers") and "accounts" in customers[0]

    products = download(
        run_job(hooked, sb, "/api/products/snapshot", productCodes="P00003-1,P00004-1", include="images")["resultUrl"]
    )
    assert sorted(v["code"] for p in products for v in p["variants"] if v["code"].endswith("-1")) == [
        "P00003-1",
        "P00004-1",
    ]
    assert all("images" in p for p in products)


def test_result_expires_after_24h(hooked, sb):
    job = run_job(hooked, sb, "/api/customers/snapshot")
    assert httpx.get(job["resultUrl"]).status_code == 200
    sb.clock.advance(24 * 3600 + 5)
    r = httpx.get(job["resultUrl"])
    assert r.status_code == 410 and err(r)["errorCode"] == "result-expired"
    assert httpx.get(f"{sb.base_url}/api-results/nothing.json.gz").status_code == 404


@pytest.mark.parametrize("outcome", ["failed", "killed", "expired"])
def test_job_outcome_knob(hooked, sb, outcome):
    sb.state.faults.job_outcome = outcome
    job_id = hooked.get("/api/customers/snapshot").json()["data"]["jobId"]
    sb.clock.advance(5)
    job = hooked.get(f"/api/system/jobs/{job_id}").json()["data"]["job"]
    if outcome == "failed":
        assert job["status"] == "running"  # a failing job is only marked failed after 3 h
        sb.clock.advance(3 * 3600 - 10)
        assert hooked.get(f"/api/system/jobs/{job_id}").json()["data"]["job"]["status"] == "running"
        sb.clock.advance(10)
        job = hooked.get(f"/api/system/jobs/{job_id}").json()["data"]["job"]
    assert job["status"] == outcome
    assert job["resultUrl"] is None and job["log"]


def test_result_file_faults(hooked, sb):
    sb.state.faults.malformed_line_at = 2
    job = run_job(hooked, sb, "/api/customers/snapshot")
    raw = gzip.decompress(httpx.get(job["resultUrl"]).content).splitlines()
    orjson.loads(raw[0])
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(raw[1])
    orjson.loads(raw[2])

    sb.state.faults.truncate_gzip = True
    body = httpx.get(job["resultUrl"]).content
    assert body[:2] == b"\x1f\x8b"
    with pytest.raises((EOFError, zlib.error, gzip.BadGzipFile)):
        gzip.decompress(body)
    sb.state.faults.truncate_gzip = False

    sb.state.faults.expire_results = True
    assert httpx.get(job["resultUrl"]).status_code == 410


def test_job_finished_webhook_is_signed(hooked, sb):
    received: list[tuple[bytes, str]] = []
    done = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append((body, self.headers["Shoptet-Webhook-Signature"]))
            self.send_response(200)
            self.end_headers()
            done.set()

        def log_message(self, *args):
            pass

    receiver = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    try:
        sb.state.webhooks.clear()
        url = f"http://127.0.0.1:{receiver.server_address[1]}/hook"
        assert hooked.post("/api/webhooks", json={"data": [{"event": "job:finished", "url": url}]}).status_code == 201
        key = hooked.post("/api/webhooks/renew-signature-key").json()["data"]["signatureKey"]
        sb.state.send_webhooks = True
        job = run_job(hooked, sb, "/api/customers/snapshot")
        assert done.wait(5)
        body, signature = received[0]
        assert signature == hmac.new(key.encode(), body, hashlib.sha1).hexdigest()
        payload = orjson.loads(body)
        assert payload["event"] == "job:finished" and payload["eventInstance"] == job["jobId"]
        assert set(payload) == {"eshopId", "event", "eventCreated", "eventInstance"}
    finally:
        receiver.shutdown()


def test_job_refresh_looks_only_at_unfinished_jobs_and_due_expiries(tmp_path, monkeypatch):
    """The soak (issue 17): refresh() runs on every job request and tick, and it went over every job ever
    made, unlinking each expired result again each time, so a simulated day grew dearer with the shop's age."""
    import random
    from pathlib import Path

    from shoptet.sandbox.jobs import RESULT_TTL, JobManager, ResultFaults

    clock = ManualClock(REFERENCE)
    jobs = JobManager(clock, random.Random(1), ResultFaults, results_dir=tmp_path)
    made = [jobs.create("/api/customers/snapshot", "customers", frozenset(), [], 10.0, "completed") for _ in range(50)]
    clock.advance(11)
    assert all(j.status == "completed" for j in jobs.all())
    files = {tmp_path / j.result_name for j in made}
    assert all(f.exists() for f in files)

    unlinked = []
    real_unlink = Path.unlink
    monkeypatch.setattr(
        Path, "unlink", lambda self, missing_ok=False: (unlinked.append(self), real_unlink(self, missing_ok))
    )
    clock.advance(RESULT_TTL + 1)
    jobs.refresh()
    assert set(unlinked) == files and not any(f.exists() for f in files)  # each expired result deleted once
    unlinked.clear()
    for _ in range(5):
        jobs.refresh()
    assert unlinked == []  # and never again
    assert not jobs._unfinished and jobs.get(made[0].job_id).status == "completed"
