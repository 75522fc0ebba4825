"""Rate limiting (leaky bucket, connection cap) and the request-level fault knobs."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from email.utils import parsedate_to_datetime

import httpx
import pytest

from shoptet.sandbox.clock import ManualClock, RealClock
from shoptet.sandbox.formats import REFERENCE
from shoptet.sandbox.server import SandboxServer


@pytest.fixture(scope="module")
def sb():
    with SandboxServer(orders=300, seed=3, clock=ManualClock(REFERENCE)) as server:
        yield server


@pytest.fixture(autouse=True)
def _reset(sb):
    yield
    sb.state.faults.__init__()
    sb.state.limits.__init__()
    sb.state.rate.reset()
    sb.state.reset_write_locks()


@pytest.fixture
def api(sb):
    with httpx.Client(base_url=sb.base_url, headers=sb.headers) as client:
        yield client


def err(resp: httpx.Response) -> dict:
    return resp.json()["errors"][0]


def test_bucket_header_counts_up_and_drains(api, sb):
    fills = [int(api.get("/api/orders/statuses").headers["X-RateLimit-Bucket-Filling"].split("/")[0]) for _ in range(3)]
    assert fills == [1, 2, 3]
    big = api.get("/api/products", params={"itemsPerPage": 1000})  # bigger responses cost more drops
    assert int(big.headers["X-RateLimit-Bucket-Filling"].split("/")[0]) > 4
    sb.clock.advance(60)  # 10 drops/s
    assert api.get("/api/orders/statuses").headers["X-RateLimit-Bucket-Filling"] == "1/200"


def test_full_bucket_429_with_http_date(api, sb):
    sb.state.limits.bucket_size = 5
    for _ in range(5):
        assert api.get("/api/orders/statuses").status_code == 200
    r = api.get("/api/orders/statuses")
    assert r.status_code == 429
    assert r.headers["X-RateLimit-Bucket-Filling"] == "5/5"
    retry_at = parsedate_to_datetime(r.headers["Retry-After"])
    assert retry_at.timestamp() > sb.clock.time()
    sb.clock.sleep(retry_at.timestamp() - sb.clock.time())
    assert api.get("/api/orders/statuses").status_code == 200
    sb.state.limits.retry_after_seconds = True
    statuses = [api.get("/api/orders/statuses") for _ in range(5)]
    r = statuses[-1]
    assert r.status_code == 429 and r.headers["Retry-After"] == "1"


def test_more_than_three_concurrent_requests_get_429(sb):
    sb.state.faults.slow_seconds = 0.4
    with ThreadPoolExecutor(6) as pool, httpx.Client(base_url=sb.base_url, headers=sb.headers) as client:
        statuses = list(pool.map(lambda _: client.get("/api/orders/statuses").status_code, range(6)))
    assert statuses.count(429) >= 1
    assert statuses.count(200) <= 3
    assert set(statuses) <= {200, 429}


def test_fault_fail_next_n_then_recovers(api, sb):
    sb.state.faults.fail_next_n = 2
    for _ in range(2):
        r = api.get("/api/orders")
        assert r.status_code == 503
        assert r.json()["data"] is None and err(r)["errorCode"] == "service-unavailable"
        assert r.headers["X-Request-ID"] == r.json()["metadata"]["requestId"]
    assert api.get("/api/orders").status_code == 200


def test_fault_storm_429(api, sb):
    sb.state.faults.storm_429 = 2
    for _ in range(2):
        r = api.get("/api/orders")
        assert r.status_code == 429 and parsedate_to_datetime(r.headers["Retry-After"])
    assert api.get("/api/orders").status_code == 200


def test_fault_error_rate(api, sb):
    sb.state.faults.error_5xx_rate = 1.0
    statuses = {api.get("/api/orders/statuses").status_code for _ in range(12)}
    assert statuses <= {500, 503} and statuses
    sb.state.faults.error_5xx_rate = 0.0
    assert api.get("/api/orders/statuses").status_code == 200


def test_fault_slow_seconds(api, sb):
    sb.state.faults.slow_seconds = 0.2
    started = time.monotonic()
    assert api.get("/api/orders/statuses").status_code == 200
    assert time.monotonic() - started >= 0.2


def test_faults_do_not_touch_result_downloads(sb):
    sb.state.faults.fail_next_n = 5
    r = httpx.get(f"{sb.base_url}/api-results/unknown.json.gz")
    assert r.status_code == 404  # served without the API gate
    assert sb.state.faults.fail_next_n == 5


def test_real_clock_scale():
    clock = RealClock(scale=1000)
    t0 = clock.time()
    time.sleep(0.01)
    assert clock.time() - t0 >= 9
    manual = ManualClock(REFERENCE)
    manual.advance(5)
    assert manual.time() == REFERENCE.timestamp() + 5
