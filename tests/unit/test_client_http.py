"""Client behaviour against scripted HTTP responses (httpx.MockTransport): exact call counts and waits."""

from __future__ import annotations

import gzip
import logging
import pickle
import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime as http_date
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from shoptet import errors as e
from shoptet.client import ShoptetClient
from shoptet.snapshots import Job

TOKEN = "123456-p-999999-0123456789abcdefghijklmnopqrstuv"  # shape of a private token
BASE = "https://api.test"
T0 = datetime(2026, 9, 15, 10, 0, tzinfo=UTC).timestamp()


class FakeClock:
    def __init__(self, start: float = T0) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def time(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def envelope(data: Any = None, errors: list[dict[str, str]] | None = None, rid: str = "rid-1") -> bytes:
    return orjson.dumps({"data": data, "errors": errors, "metadata": {"requestId": rid}})


def err(status: int, code: str, message: str = "boom", headers: dict[str, str] | None = None) -> httpx.Response:
    body = envelope(None, [{"errorCode": code, "message": message, "instance": "unknown"}])
    return httpx.Response(status, content=body, headers=headers)


def ok(data: Any, headers: dict[str, str] | None = None, status: int = 200) -> httpx.Response:
    return httpx.Response(status, content=envelope(data), headers=headers)


Handler = Callable[[httpx.Request], httpx.Response]


def make_client(handler: Handler, clock: FakeClock | None = None, **kw: Any) -> tuple[ShoptetClient, list]:
    calls: list[httpx.Request] = []
    clock = clock or FakeClock()

    def record(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return handler(request)

    client = ShoptetClient(
        BASE,
        TOKEN,
        clock=clock.time,
        sleep=clock.sleep,
        rng=random.Random(0),
        transport=httpx.MockTransport(record),
        **kw,
    )
    return client, calls


def scripted(*responses: httpx.Response) -> Handler:
    queue = list(responses)
    return lambda request: queue.pop(0) if len(queue) > 1 else queue[0]


# --- auth, envelope ----------------------------------------------------------------------------


def test_headers_and_envelope() -> None:
    client, calls = make_client(scripted(ok({"x": 1}, headers={"X-Request-ID": "hdr-id"})))
    with client:
        response = client.request("GET", "/api/eshop", params={"from": datetime(2024, 1, 1, tzinfo=UTC)})
    assert response.data == {"x": 1} and response.request_id == "rid-1"  # metadata wins over header
    req = calls[0]
    assert req.headers["Shoptet-Private-API-Token"] == TOKEN
    assert req.headers["Content-Type"] == "application/json"
    assert "Shoptet-Access-Token" not in req.headers
    assert req.url.query == b"from=2024-01-01T00%3A00%3A00%2B0000"


def test_access_token_kind() -> None:
    clock = FakeClock()
    calls: list[httpx.Request] = []
    client = ShoptetClient(
        BASE,
        TOKEN,
        token_kind="access",
        clock=clock.time,
        sleep=clock.sleep,
        transport=httpx.MockTransport(lambda r: calls.append(r) or ok({})),
    )
    client.get("/api/eshop")
    assert calls[0].headers["Shoptet-Access-Token"] == TOKEN
    assert "Shoptet-Private-API-Token" not in calls[0].headers
    with pytest.raises(ValueError, match="HUB_SHOPTET_TOKEN"):
        ShoptetClient(BASE, "")


def test_request_id_from_header_when_no_metadata() -> None:
    response = httpx.Response(404, json={"data": None, "errors": None}, headers={"X-Request-ID": "hdr-9"})
    client, _ = make_client(scripted(response))
    with pytest.raises(e.NotFoundError) as info:
        client.get("/api/orders/1")
    assert info.value.request_id == "hdr-9" and "hdr-9" in str(info.value)


# --- retries -----------------------------------------------------------------------------------


def test_5xx_retried_then_success() -> None:
    clock = FakeClock()
    client, calls = make_client(scripted(err(500, "x"), err(503, "maintenance"), ok({"n": 1})), clock)
    assert client.get("/api/orders") == {"n": 1}
    assert len(calls) == 3
    assert len(clock.sleeps) == 2 and 0 <= clock.sleeps[0] <= 1 and 0 <= clock.sleeps[1] <= 2


def test_5xx_gives_up_after_max_retries() -> None:
    clock = FakeClock()
    client, calls = make_client(scripted(err(502, "bad-gateway")), clock)
    with pytest.raises(e.ServerError) as info:
        client.get("/api/orders")
    assert len(calls) == 1 + 4 and info.value.transient
    assert sum(clock.sleeps) <= 1 + 2 + 4 + 8


def test_423_is_retried() -> None:
    client, calls = make_client(scripted(err(423, "locked"), ok({})))
    client.get("/api/orders")
    assert len(calls) == 2


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 413, 422])
def test_no_retry_on_client_errors(status: int) -> None:
    clock = FakeClock()
    client, calls = make_client(scripted(err(status, "some-code")), clock)
    with pytest.raises(e.ShoptetError) as info:
        client.get("/api/orders")
    assert len(calls) == 1 and clock.sleeps == []
    assert info.value.status == status and not info.value.transient


def test_timeouts_retried_then_transport_error() -> None:
    clock = FakeClock()

    def boom(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectTimeout("timed out", request=request)

    client, calls = make_client(boom, clock, max_retries=2)
    with pytest.raises(e.TransportError) as info:
        client.get("/api/orders")
    assert len(calls) == 3 and len(clock.sleeps) == 2 and info.value.transient


def test_429_waits_retry_after_http_date() -> None:
    clock = FakeClock()
    until = http_date(datetime.fromtimestamp(T0 + 7, tz=UTC), usegmt=True)
    client, calls = make_client(scripted(err(429, "rate", headers={"Retry-After": until}), ok({})), clock)
    client.get("/api/orders")
    assert len(calls) == 2
    assert clock.sleeps == [pytest.approx(7.0 + 1.0)]  # + 1 s for the date's whole-second resolution


def test_429_without_retry_after_backs_off_and_is_bounded() -> None:
    clock = FakeClock()
    client, calls = make_client(scripted(httpx.Response(429, text="<html>busy</html>")), clock)
    with pytest.raises(e.RateLimitedError):
        client.get("/api/orders")
    assert len(calls) == 1 + 8
    assert all(0 < s <= 30 for s in clock.sleeps)


def test_429_and_transient_budgets_are_separate() -> None:
    client, calls = make_client(
        scripted(*([err(429, "r", headers={"Retry-After": "1"})] * 8 + [err(500, "x")] * 4 + [ok({})]))
    )
    client.get("/api/orders")
    assert len(calls) == 13  # the documented worst case: 1 + 4 + 8


def test_bucket_filling_slows_down_next_request() -> None:
    clock = FakeClock()
    client, calls = make_client(
        scripted(
            ok({}, headers={"X-RateLimit-Bucket-Filling": "180/200"}),
            ok({}, headers={"X-RateLimit-Bucket-Filling": "100/200"}),
        ),
        clock,
    )
    client.get("/api/orders")
    assert clock.sleeps == []
    client.get("/api/orders")
    assert clock.sleeps == [pytest.approx(4.0)]  # (180 - 140) / 10
    client.get("/api/orders")
    assert len(clock.sleeps) == 1  # below threshold: no more waiting


# --- secrets -----------------------------------------------------------------------------------


def test_token_never_in_errors_repr_or_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    echo = err(401, "invalid-token", message=f"Token {TOKEN} is not valid")
    client, _ = make_client(scripted(err(500, "x"), echo))
    assert TOKEN not in repr(client) and "***" in repr(client)
    with pytest.raises(e.AuthenticationError) as info:
        client.get("/api/orders", params={"email": "a@b.cz"})
    exc = info.value
    for text in (str(exc), repr(exc), str(exc.__dict__), caplog.text):
        assert TOKEN not in text
    assert "HUB_SHOPTET_TOKEN" in str(exc) and "a@b.cz" not in str(exc)
    with pytest.raises(TypeError):
        pickle.dumps(client)


# --- paging ------------------------------------------------------------------------------------


def test_iter_orders_rescans_when_total_changes() -> None:
    pages = {
        1: [{"code": "1"}, {"code": "2"}],
        2: [{"code": "3"}, {"code": "4"}],
        3: [{"code": "5"}],
    }
    totals = iter([5, 6, 6, 6, 6])  # a new order appears after page 1

    def handler(request: httpx.Request) -> httpx.Response:
        page = int(request.url.params["page"])
        assert request.url.params["itemsPerPage"] == "50"
        total = next(totals)
        items = list(pages[page])
        if total == 6 and page == 1:
            items = [{"code": "0"}, *items[:1]]
        paginator = {"totalCount": total, "page": page, "pageCount": 3, "itemsOnPage": len(items)}
        return ok({"orders": items, "paginator": paginator})

    client, calls = make_client(handler)
    codes = [o["code"] for o in client.iter_orders({"statusId": -2})]
    assert sorted(codes) == ["0", "1", "2", "3", "4", "5"] and len(codes) == len(set(codes))
    assert [int(c.url.params["page"]) for c in calls] == [1, 2, 1, 2, 3]


def test_iter_changes_uses_endpoint_max() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        items = [{"guid": "g1", "changeTime": "2026-09-01T10:00:00+0200", "changeType": "edit"}]
        return ok({"changes": items, "paginator": {"totalCount": 1, "page": 1, "pageCount": 1}})

    client, _ = make_client(handler)
    since = datetime(2026, 9, 1, tzinfo=UTC)
    assert len(list(client.iter_changes("customers", since, "edit"))) == 1
    assert seen[0].url.params["itemsPerPage"] == "20" and seen[0].url.params["changeType"] == "edit"
    list(client.iter_changes("products", since))
    assert seen[1].url.params["itemsPerPage"] == "1000" and "changeType" not in seen[1].url.params
    assert seen[1].url.params["from"] == "2026-09-01T00:00:00+0000"


def test_detail_unwrapping() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        path = request.url.raw_path.decode()
        if path.startswith("/api/orders/"):
            return ok({"order": {"code": path.split("?")[0].rsplit("/", 1)[1]}})
        if path.startswith("/api/customers/"):
            return ok({"customer": {"guid": "c"}})
        return ok({"guid": "p"})

    client, calls = make_client(handler)
    assert client.get_order("2026/01", include=["notes", "images"]) == {"code": "2026%2F01"}
    assert calls[0].url.params["include"] == "notes,images"
    assert client.get_customer("c") == {"guid": "c"}
    assert client.get_product("p") == {"guid": "p"}


# --- webhooks ----------------------------------------------------------------------------------


def test_webhook_reused_registered_and_no_rights() -> None:
    theirs = {"id": 1, "event": "job:finished", "url": "https://other.example/hook"}
    client, calls = make_client(scripted(ok({"webhooks": [theirs]})))
    assert client.ensure_job_finished_webhook("https://ours.example/hook") == theirs
    assert [c.method for c in calls] == ["GET"]  # never replaced or deleted

    created = {"id": 2, "event": "job:finished", "url": "https://ours.example/hook"}
    client, calls = make_client(scripted(ok({"webhooks": []}), ok({"webhooks": [created]}, status=201)))
    assert client.ensure_job_finished_webhook("https://ours.example/hook") == created
    assert orjson.loads(calls[1].content) == {"data": [{"event": "job:finished", "url": "https://ours.example/hook"}]}

    client, _ = make_client(scripted(ok({"webhooks": []})))
    with pytest.raises(e.WebhookNotConfiguredError, match="HUB_WEBHOOK_URL"):
        client.ensure_job_finished_webhook(None)

    client, _ = make_client(scripted(err(403, "invalid-token-no-rights")))
    with pytest.raises(e.WebhookPermissionError, match="Webhooks"):
        client.ensure_job_finished_webhook("https://ours.example/hook")


# --- downloads ---------------------------------------------------------------------------------

LINES = b"".join(orjson.dumps({"code": str(i)}) + b"\n" for i in range(2000))
RESULT_URL = "https://shop.example/api-results/ab12cd3-secretpart.json"


class Chunked(httpx.SyncByteStream):
    """A body that arrives in small pieces, like a network stream (pre-read bytes cannot be streamed)."""

    def __init__(self, body: bytes) -> None:
        self.body = body

    def __iter__(self):  # type: ignore[override]
        yield self.body[:1]  # a 1-byte first chunk exercises the magic-bytes sniffing
        for i in range(1, len(self.body), 4096):
            yield self.body[i : i + 4096]


def download_client(body: bytes, status: int = 200) -> tuple[ShoptetClient, list[httpx.Request]]:
    return make_client(lambda r: httpx.Response(status, stream=Chunked(body)))


def test_download_complete_gzip_without_auth(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    client, calls = download_client(gzip.compress(LINES))
    path = client.download_result(RESULT_URL, tmp_path, min_free_bytes=0)
    assert path.parent == tmp_path and path.name.endswith(".jsonl.gz")
    assert gzip.decompress(path.read_bytes()) == LINES
    assert list(tmp_path.iterdir()) == [path]
    req = calls[0]
    assert not any(h.lower().startswith("shoptet") for h in req.headers)
    assert "secretpart" not in caplog.text and "ab12cd3-secret" not in caplog.text


def test_download_multimember_and_plain(tmp_path: Path) -> None:
    client, _ = download_client(gzip.compress(LINES[:100]) + gzip.compress(LINES[100:]))
    assert client.download_result(RESULT_URL, tmp_path, min_free_bytes=0).name.endswith(".gz")
    client, _ = download_client(LINES)
    assert client.download_result(RESULT_URL, tmp_path, min_free_bytes=0).read_bytes() == LINES


@pytest.mark.parametrize(
    "body",
    [gzip.compress(LINES)[:-9], gzip.compress(LINES)[: len(gzip.compress(LINES)) // 2], b"<html>", b"\x1f"],
)
def test_download_corrupt(tmp_path: Path, body: bytes) -> None:
    client, _ = download_client(body)
    with pytest.raises(e.CorruptResultError) as info:
        client.download_result(RESULT_URL, tmp_path, min_free_bytes=0)
    assert info.value.transient
    assert list(tmp_path.iterdir()) == []  # temp file removed


@pytest.mark.parametrize("status", [404, 410])
def test_download_expired(tmp_path: Path, status: int) -> None:
    client, _ = download_client(b"gone", status)
    with pytest.raises(e.ResultExpiredError) as info:
        client.download_result(RESULT_URL, tmp_path, min_free_bytes=0)
    assert "secretpart" not in str(info.value)


def test_download_refuses_expired_job_and_full_disk(tmp_path: Path) -> None:
    client, calls = download_client(gzip.compress(LINES))
    past = datetime.fromtimestamp(T0, tz=UTC) - timedelta(seconds=1)
    job = Job(job_id="ab12cd3", status="completed", result_url=RESULT_URL, valid_until=past)
    with pytest.raises(e.ResultExpiredError):
        client.download_result(job, tmp_path, min_free_bytes=0)
    with pytest.raises(e.InsufficientDiskSpaceError):
        client.download_result(RESULT_URL, tmp_path, min_free_bytes=2**62)
    assert calls == [] and list(tmp_path.iterdir()) == []
    assert "secretpart" not in repr(job)


# --- §2.4: Retry-After honoured in full, bounded by the deadline ----------------------------------------


def test_long_retry_after_is_honoured_not_cut_to_120s() -> None:
    """Shoptet says 10 minutes: one wait of 10 minutes, not five early retries that each earn a 429."""
    clock = FakeClock()
    until = T0 + 600

    def handler(request: httpx.Request) -> httpx.Response:
        if clock.now < until:
            when = http_date(datetime.fromtimestamp(until, tz=UTC), usegmt=True)
            return err(429, "rate", headers={"Retry-After": when})
        return ok({"n": 1})

    client, calls = make_client(handler, clock)
    assert client.get("/api/orders") == {"n": 1}
    assert len(calls) == 2 and clock.sleeps == [pytest.approx(601.0)]


def test_retry_after_past_the_deadline_raises_at_once() -> None:
    clock = FakeClock()
    client, calls = make_client(scripted(err(429, "rate", headers={"Retry-After": "900"}), ok({})), clock)
    with client.deadline(T0 + 300), pytest.raises(e.RateLimitedError) as info:
        client.get("/api/system/jobs")
    assert len(calls) == 1 and clock.sleeps == []
    assert info.value.retry_after == 900 and "deadline" in str(info.value) and info.value.transient
    client.get("/api/system/jobs")  # outside the deadline scope: waits the 900 s
    assert clock.sleeps == [900]


# --- §2.6: 423 waits out Shoptet's ~5 s write lock -----------------------------------------------------


def test_423_waits_for_the_write_lock() -> None:
    clock = FakeClock()
    client, calls = make_client(scripted(err(423, "locked"), err(423, "locked"), ok({})), clock)
    client.request("POST", "/api/webhooks", json={"data": []})
    assert len(calls) == 3 and all(5.0 <= s <= 6.0 for s in clock.sleeps) and len(clock.sleeps) == 2


# --- §1.10: sweeping downloads left behind ---------------------------------------------------------------


def test_sweep_downloads_only_our_old_files(tmp_path: Path) -> None:
    import os
    import time

    from shoptet.download import sweep_downloads

    old = time.time() - 2 * 86400
    ours_old = ["shoptet-ab12cd3-x1y2z3w4.part", "shoptet-ab12cd3-k9j8h7g6.jsonl.gz", "shoptet-result-a_b.jsonl"]
    keep = ["shoptet-ab12cd3-fresh123.part", "notes.txt", "shoptet-report.csv", "my-shoptet-ab-cd.jsonl.gz"]
    for name in ours_old + keep:
        (tmp_path / name).write_bytes(b"x" * 100)
    for name in ours_old + keep[1:]:
        os.utime(tmp_path / name, (old, old))
    (tmp_path / "shoptet-dir-abcdefgh.part").mkdir()  # a folder with our name shape is not ours
    os.utime(tmp_path / "shoptet-dir-abcdefgh.part", (old, old))
    assert sweep_downloads(tmp_path) == (3, 300)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(keep + ["shoptet-dir-abcdefgh.part"])
    assert sweep_downloads(tmp_path / "missing") == (0, 0)


def test_clients_share_one_tls_context_instead_of_loading_the_ca_bundle_each(monkeypatch) -> None:
    """Found by profiling the soak: each ShoptetClient built two SSL contexts (~25 ms each, the CA bundle
    read twice), and a flow makes one per task: 38 % of a simulated day's wall time."""
    import ssl

    from shoptet.oauth import AddonTokenSource

    built: list[ssl.SSLContext] = []
    real = ssl.SSLContext.load_verify_locations

    def counting(self, *a, **kw):
        built.append(self)
        return real(self, *a, **kw)

    monkeypatch.setattr(ssl.SSLContext, "load_verify_locations", counting)
    clients = [ShoptetClient("https://api.myshoptet.com", "t") for _ in range(3)]
    AddonTokenSource("https://shop.example/action/ApiOAuthServer/token", "o")
    assert len(built) <= 1, f"{len(built)} CA bundle loads for 3 clients and a token source"
    contexts = {
        id(pool._ssl_context) for c in clients for pool in (c._http._transport._pool, c._download_http._transport._pool)
    }
    assert len(contexts) == 1
    for c in clients:
        c.close()
