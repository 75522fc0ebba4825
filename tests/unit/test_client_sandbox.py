"""The client against the sandbox Shoptet API (real HTTP on localhost, manual clock: nothing sleeps)."""

from __future__ import annotations

import gzip
import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import orjson
import pytest

from shoptet import errors as e
from shoptet.client import ShoptetClient
from shoptet.sandbox.clock import ManualClock
from shoptet.sandbox.formats import REFERENCE
from shoptet.sandbox.server import SandboxServer

ORDERS = 200
HOOK_URL = "https://hub.example.com/hooks/shoptet"


class CountingTransport(httpx.BaseTransport):
    """Real HTTP, recording status codes and the peak number of requests in flight."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()
        self.statuses: Counter[int] = Counter()
        self.paths: list[str] = []
        self.in_flight = 0
        self.peak = 0
        self.lock = threading.Lock()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        with self.lock:
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)
            self.paths.append(request.url.path)
        try:
            response = self.inner.handle_request(request)
        finally:
            with self.lock:
                self.in_flight -= 1
        self.statuses[response.status_code] += 1
        return response

    def close(self) -> None:
        self.inner.close()


class Sleeps:
    """The injected sleep: records and advances the sandbox's manual clock."""

    def __init__(self, clock: ManualClock) -> None:
        self.clock = clock
        self.calls: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)
        self.clock.advance(max(0.0, seconds))


@pytest.fixture(scope="module")
def sb() -> Iterator[SandboxServer]:
    with SandboxServer(orders=ORDERS, seed=42, clock=ManualClock(REFERENCE), job_seconds=2.0) as server:
        yield server


@pytest.fixture(autouse=True)
def _reset(sb: SandboxServer) -> Iterator[None]:
    yield
    sb.state.faults.__init__()
    sb.state.limits.__init__()
    sb.state.rate.reset()
    sb.state.reset_write_locks()
    sb.state.webhooks.clear()
    sb.state.job_seconds = 2.0


@pytest.fixture
def transport() -> CountingTransport:
    return CountingTransport()


@pytest.fixture
def sleeps(sb: SandboxServer) -> Sleeps:
    return Sleeps(sb.clock)


@pytest.fixture
def client(sb: SandboxServer, transport: CountingTransport, sleeps: Sleeps) -> Iterator[ShoptetClient]:
    with ShoptetClient(
        sb.base_url, sb.token, clock=sb.clock.time, sleep=sleeps, rng=random.Random(1), transport=transport
    ) as c:
        yield c


@pytest.fixture
def hooked(client: ShoptetClient) -> ShoptetClient:
    client.ensure_job_finished_webhook(HOOK_URL)
    return client


# --- retries and rate limits -------------------------------------------------------------------


def test_5xx_retried_then_success(sb, client, transport, sleeps) -> None:
    sb.state.faults.fail_next_n = 2
    data = client.get("/api/orders", {"itemsPerPage": 5})
    assert len(data["orders"]) == 5
    assert transport.statuses == Counter({503: 2, 200: 1}) and len(sleeps.calls) == 2


def test_5xx_exhausted(sb, client, transport) -> None:
    sb.state.faults.fail_next_n = 10
    with pytest.raises(e.ServerError) as info:
        client.get("/api/orders")
    assert transport.statuses[503] == 5 and info.value.transient and info.value.request_id


def test_no_retry_on_4xx(client, transport, sleeps) -> None:
    with pytest.raises(e.NotFoundError) as info:
        client.get_order("no-such-order")
    assert info.value.error_code == "order-not-found" and info.value.status == 404
    with pytest.raises(e.InvalidRequestError):
        client.get("/api/orders", {"externalCode": "x"})  # unknown parameter -> 400
    assert transport.statuses == Counter({404: 1, 400: 1}) and sleeps.calls == []


def test_429_storm_waits_retry_after_on_injected_clock(sb, client, transport, sleeps) -> None:
    sb.state.faults.storm_429 = 5
    before, real = sb.clock.time(), time.monotonic()
    client.get("/api/orders", {"itemsPerPage": 1})
    assert transport.statuses == Counter({429: 5, 200: 1})
    assert sb.clock.time() - before >= 5 * 1.0  # Retry-After: now + 1 s each time
    assert time.monotonic() - real < 5  # ... waited on the manual clock, not for real


def test_429_storm_retry_after_seconds_and_bounded(sb, client, transport) -> None:
    sb.state.limits.retry_after_seconds = True
    sb.state.faults.storm_429 = 50
    with pytest.raises(e.RateLimitedError) as info:
        client.get("/api/orders")
    assert transport.statuses[429] == 9 and info.value.transient and info.value.retry_after == 1.0


def test_bucket_slowdown_avoids_429(sb, client, transport, sleeps) -> None:
    sb.state.limits.bytes_per_drop = 500  # make every list page expensive (~40 drops each)
    for _ in range(30):
        client.get("/api/orders", {"itemsPerPage": 50})
    assert transport.statuses == Counter({200: 30})
    assert sleeps.calls and max(sleeps.calls) <= 6.0  # drained to 70 % before continuing


def test_at_most_three_concurrent_connections(sb, client, transport) -> None:
    sb.state.faults.slow_seconds = 0.05  # real seconds: requests overlap
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(3):
                client.get("/api/orders", {"itemsPerPage": 1})
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
    assert transport.statuses == Counter({200: 30})  # the sandbox never saw a 4th connection
    assert transport.peak == 3 and client.limiter.peak_in_flight == 3


def test_over_three_connections_is_what_the_sandbox_punishes(sb, transport, sleeps) -> None:
    """Control for the test above: a client allowing 6 connections does get 429s."""
    sb.state.faults.slow_seconds = 0.05
    greedy = ShoptetClient(
        sb.base_url, sb.token, max_connections=6, clock=sb.clock.time, sleep=sleeps, transport=transport
    )
    barrier = threading.Barrier(6)

    def work() -> None:
        barrier.wait()
        greedy.get("/api/orders", {"itemsPerPage": 1})

    threads = [threading.Thread(target=work) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    greedy.close()
    assert transport.statuses[429] >= 1 and transport.statuses[200] == 6


# --- secrets -----------------------------------------------------------------------------------


def test_token_never_in_exceptions_or_logs(sb, transport, sleeps, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    limited = "limited-" + "a" * 40
    sb.state.tokens[limited] = {"orders"}  # no webhooks/products rights
    try:
        texts: list[str] = []
        for token in (limited, "wrong-" + "b" * 40):
            c = ShoptetClient(sb.base_url, token, clock=sb.clock.time, sleep=sleeps, transport=transport)
            texts.append(repr(c))
            for call, arg in ((c.get_product, "x"), (c.ensure_job_finished_webhook, HOOK_URL)):
                with pytest.raises(e.ShoptetError) as info:
                    call(arg)
                texts += [str(info.value), repr(info.value), str(vars(info.value))]
            c.close()
        joined = "\n".join(texts) + caplog.text
        assert limited not in joined and "wrong-" + "b" * 40 not in joined
        assert sb.token not in joined
    finally:
        del sb.state.tokens[limited]


def test_access_token_kind(sb, transport, sleeps) -> None:
    c = ShoptetClient(
        sb.base_url, sb.token, token_kind="access", clock=sb.clock.time, sleep=sleeps, transport=transport
    )
    assert c.get("/api/orders", {"itemsPerPage": 1})["orders"]
    bad = ShoptetClient(sb.base_url, "x" * 40, token_kind="access", clock=sb.clock.time, sleep=sleeps)
    with pytest.raises(e.AuthenticationError) as info:
        bad.get("/api/orders")
    assert info.value.error_code == "expired-token"
    c.close()
    bad.close()


# --- lists and details -------------------------------------------------------------------------


def test_orders_changes_and_details(client, transport) -> None:
    orders = list(client.iter_orders())
    assert len(orders) == ORDERS == len({o["code"] for o in orders})
    assert all("items" not in o for o in orders)
    order = client.get_order(orders[0]["code"], include="notes")
    assert order["code"] == orders[0]["code"] and "items" in order and "notes" in order

    since = REFERENCE - timedelta(days=29)
    changes = list(client.iter_changes("orders", since))
    assert changes and all({"code", "changeTime", "changeType"} <= set(c) for c in changes)
    customers = list(client.iter_changes("customers", since, "edit"))
    assert customers
    assert client.get_customer(customers[0]["guid"])["guid"] == customers[0]["guid"]
    products = list(client.iter_changes("products", since))
    if products:
        assert client.get_product(products[0]["guid"])["guid"] == products[0]["guid"]
    assert 400 not in transport.statuses


# --- webhooks ----------------------------------------------------------------------------------


def test_webhook_registration_and_reuse(sb, client) -> None:
    with pytest.raises(e.WebhookRegistrationRequiredError, match="HUB_WEBHOOK_URL"):
        client.request_snapshot("orders", {})
    with pytest.raises(e.WebhookNotConfiguredError, match="HUB_WEBHOOK_URL"):
        client.ensure_job_finished_webhook(None)
    created = client.ensure_job_finished_webhook(HOOK_URL)
    assert created["url"] == HOOK_URL and created["event"] == "job:finished"
    # Someone else's (or our older) registration is reused, never replaced or deleted.
    again = client.ensure_job_finished_webhook("https://other.example.com/hook")
    assert again["id"] == created["id"] and again["url"] == HOOK_URL
    assert client.ensure_job_finished_webhook(None)["id"] == created["id"]
    assert [h.url for h in sb.state.webhooks.list()] == [HOOK_URL]


def test_webhook_without_rights(sb, transport, sleeps) -> None:
    token = "nohooks-" + "c" * 40
    sb.state.tokens[token] = {"orders", "customers", "products", "system"}
    try:
        c = ShoptetClient(sb.base_url, token, clock=sb.clock.time, sleep=sleeps, transport=transport)
        with pytest.raises(e.WebhookPermissionError) as info:
            c.ensure_job_finished_webhook(HOOK_URL)
        assert "Webhooks" in str(info.value) and not info.value.transient
        assert info.value.error_code == "invalid-token-no-rights"
        c.close()
    finally:
        del sb.state.tokens[token]


# --- snapshots ---------------------------------------------------------------------------------


def test_snapshot_end_to_end(sb, hooked, transport, tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    job_id = hooked.request_snapshot("orders", {"include": "notes"})
    job = hooked.wait_for_job(job_id)
    assert job.status == "completed" and job.result_url and job.valid_until.tzinfo is not None
    path = hooked.download_result(job, tmp_path)
    lines = gzip.decompress(path.read_bytes()).splitlines()
    assert len(lines) == ORDERS and "notes" in orjson.loads(lines[0])
    assert job.result_url not in caplog.text
    assert job.result_url.rsplit("/", 1)[1] not in caplog.text  # the bearer part of the link


def test_slow_job_never_hits_poll_cap(sb, hooked, transport, sleeps) -> None:
    sb.state.job_seconds = 2400.0
    job_id = hooked.request_snapshot("customers", {})
    job = hooked.wait_for_job(job_id)
    assert job.status == "completed"
    assert sb.state.jobs.get(job_id).polls == 0  # no detail poll of the unfinished job
    assert transport.paths.count(f"/api/system/jobs/{job_id}") == 1
    assert max(sleeps.calls) <= 60 and 403 not in transport.statuses


@pytest.mark.parametrize("outcome", ["failed", "killed", "expired"])
def test_failed_jobs_raise_with_log(sb, hooked, outcome: str) -> None:
    sb.state.faults.job_outcome = outcome
    job_id = hooked.request_snapshot("products", {})
    if outcome == "failed":
        sb.clock.advance(2.9 * 3600)  # Shoptet marks it failed only 3 h after creation
    with pytest.raises(e.JobFailedError) as info:
        hooked.wait_for_job(job_id, deadline_seconds=3600)
    assert info.value.job_id == job_id and info.value.status == outcome
    assert info.value.log and outcome in info.value.log and not info.value.transient


def test_deadline_exceeded(sb, hooked) -> None:
    sb.state.job_seconds = 7200.0
    job_id = hooked.request_snapshot("orders", {})
    start = sb.clock.time()
    with pytest.raises(e.JobDeadlineExceededError) as info:
        hooked.wait_for_job(job_id, deadline_seconds=900)
    assert info.value.job_id == job_id and sb.clock.time() - start == pytest.approx(900, abs=1)
    assert sb.state.jobs.get(job_id).polls == 0


def test_truncated_result_is_corrupt(sb, hooked, tmp_path: Path) -> None:
    job = hooked.wait_for_job(hooked.request_snapshot("orders", {}))
    sb.state.faults.truncate_gzip = True
    with pytest.raises(e.CorruptResultError) as info:
        hooked.download_result(job, tmp_path)
    assert info.value.transient and list(tmp_path.iterdir()) == []


def test_expired_result(sb, hooked, tmp_path: Path) -> None:
    job = hooked.wait_for_job(hooked.request_snapshot("customers", {}))
    sb.state.faults.expire_results = True
    with pytest.raises(e.ResultExpiredError):
        hooked.download_result(job.result_url, tmp_path)  # 410 from the result host
    sb.state.faults.expire_results = False
    sb.clock.advance(25 * 3600)
    with pytest.raises(e.ResultExpiredError):
        hooked.download_result(job, tmp_path)  # validUntil passed: not even requested
    assert list(tmp_path.iterdir()) == []


# --- §2.3: a lost answer to a snapshot request does not queue a second job -----------------------------


def _jobs(sb: SandboxServer, endpoint: str) -> list:
    return [j for j in sb.state.jobs.all() if j.endpoint == endpoint]


@pytest.mark.parametrize(
    "fault",
    [
        {"status": 502, "after": True},  # a proxy 5xx after Shoptet queued the job
        {"status": 0, "after": True, "delay": 1.0},  # the answer arrives after the client's timeout
    ],
    ids=["5xx-after-queueing", "timeout-after-queueing"],
)
def test_lost_snapshot_answer_reuses_the_queued_job(sb, transport, sleeps, fault) -> None:
    from shoptet.sandbox.state import PathFault

    with ShoptetClient(sb.base_url, sb.token, timeout=0.4, clock=sb.clock.time, sleep=sleeps, transport=transport) as c:
        c.ensure_job_finished_webhook(HOOK_URL)
        before = len(_jobs(sb, "/api/products/snapshot"))
        sb.state.faults.path_faults.append(PathFault("/api/products/snapshot", **fault))
        job_id = c.request_snapshot("products", {})
        created = _jobs(sb, "/api/products/snapshot")[before:]
        assert [j.job_id for j in created] == [job_id]  # one job, and it is the one we got
        assert c.wait_for_job(job_id).status == "completed"


def test_snapshot_5xx_before_queueing_is_requested_again(sb, hooked, transport) -> None:
    from shoptet.sandbox.state import PathFault

    before = len(_jobs(sb, "/api/customers/snapshot"))
    sb.state.faults.path_faults.append(PathFault("/api/customers/snapshot", count=2, status=503))
    job_id = hooked.request_snapshot("customers", {})
    assert [j.job_id for j in _jobs(sb, "/api/customers/snapshot")[before:]] == [job_id]
    assert transport.paths.count("/api/customers/snapshot") == 3


def test_retried_request_adopts_the_job_of_an_earlier_attempt(sb, hooked, transport) -> None:
    started = sb.clock.time()
    first = hooked.request_snapshot("orders", {})  # e.g. an attempt whose task then died
    sb.clock.advance(30)
    n = len(sb.state.jobs.all())
    again = hooked.request_snapshot("orders", {}, reuse_since=started)
    assert again == first and len(sb.state.jobs.all()) == n
    assert transport.paths.count("/api/orders/snapshot") == 1


def test_an_older_or_failed_job_is_not_adopted(sb, hooked) -> None:
    old = hooked.request_snapshot("orders", {})
    sb.clock.advance(120)
    assert hooked.request_snapshot("orders", {}, reuse_since=sb.clock.time()) != old


# --- §2.6: Shoptet's 423 write lock ----------------------------------------------------------------------


def test_sandbox_locks_identical_writes_and_client_waits(sb, client, transport, sleeps) -> None:
    body = {"data": [{"event": "job:finished", "url": HOOK_URL}]}
    raw = httpx.post(f"{sb.base_url}/api/webhooks", json=body, headers=sb.headers)
    assert raw.status_code == 201
    hook_id = raw.json()["data"]["webhooks"][0]["id"]
    assert httpx.delete(f"{sb.base_url}/api/webhooks/{hook_id}", headers=sb.headers).status_code == 200
    # The client now sends the identical registration within 5 s: 423, waits, then succeeds.
    hook = client.ensure_job_finished_webhook(HOOK_URL)
    assert hook["url"] == HOOK_URL and transport.statuses[423] == 1 and transport.statuses[201] == 1
    assert any(5.0 <= s <= 6.0 for s in sleeps.calls)


# --- §2.2: add-on access tokens, refreshed ---------------------------------------------------------------


def _addon(sb: SandboxServer, transport, sleeps, **kw):
    from shoptet.oauth import AddonTokenSource

    source = AddonTokenSource(sb.base_url, sb.state.oauth_token, clock=sb.clock.time, **kw)
    client = ShoptetClient(sb.base_url, token_source=source, clock=sb.clock.time, sleep=sleeps, transport=transport)
    return source, client


def test_addon_token_refreshed_before_expiry(sb, transport, sleeps) -> None:
    source, c = _addon(sb, transport, sleeps)
    with c:
        for _ in range(6):  # 6 x 25 min = 2.5 h of syncing with 30-minute tokens
            assert c.get("/api/orders", {"itemsPerPage": 1})["orders"]
            sb.clock.advance(25 * 60)
    assert transport.statuses[401] == 0 and source.fetches >= 5
    assert c.token_kind == "access" and sb.state.oauth_token not in repr(c) + repr(source)


def test_addon_expired_token_refreshed_once(sb, transport, sleeps) -> None:
    source, c = _addon(sb, transport, sleeps)
    with c:
        c.get("/api/orders", {"itemsPerPage": 1})
        for tok, (oauth, _) in list(sb.state.access_tokens.items()):  # revoked early, e.g. clock skew
            sb.state.access_tokens[tok] = (oauth, sb.clock.time() - 1)
        assert c.get("/api/orders", {"itemsPerPage": 1})["orders"]
    assert transport.statuses[401] == 1 and source.fetches == 2


def test_addon_errors_are_typed_and_secret_free(sb, transport, sleeps) -> None:
    from shoptet.oauth import AddonTokenSource

    bad = AddonTokenSource(sb.base_url, "oauth-wrong-" + "z" * 30, clock=sb.clock.time)
    with pytest.raises(e.AddonAuthorizationError) as info:
        bad.token()
    assert "z" * 30 not in str(info.value) + repr(info.value) and not info.value.transient
    sb.state.access_tokens.clear()
    sources = [AddonTokenSource(sb.base_url, sb.state.oauth_token, clock=sb.clock.time) for _ in range(6)]
    for s in sources[:5]:
        s.token()
    with pytest.raises(e.AddonTokenLimitError) as limit:
        sources[5].token()
    assert limit.value.error_code == "maximum_tokens_reached" and limit.value.transient


def test_static_access_token_expiry_says_what_to_do(sb, transport, sleeps) -> None:
    c = ShoptetClient(sb.base_url, "x" * 40, token_kind="access", clock=sb.clock.time, sleep=sleeps)
    with c, pytest.raises(e.AccessTokenExpiredError) as info:
        c.get("/api/orders")
    assert "HUB_SHOPTET_OAUTH_TOKEN" in str(info.value)
