"""Pure pieces of the client: rate-limit math, Retry-After parsing, backoff, time format, error mapping."""

from __future__ import annotations

import pickle
import random
import threading
from datetime import UTC, datetime, timedelta, timezone

import pytest

from shoptet import errors as e
from shoptet.ratelimit import (
    RateLimiter,
    backoff_delay,
    bucket_wait,
    parse_bucket_filling,
    parse_retry_after,
    shared_limiter,
)
from shoptet.timefmt import format_datetime, parse_datetime


def test_parse_bucket_filling() -> None:
    assert parse_bucket_filling("120/200") == (120.0, 200.0)
    assert parse_bucket_filling(" 7 / 200 ") == (7.0, 200.0)
    for bad in (None, "", "abc", "5", "5/0", "-1/200"):
        assert parse_bucket_filling(bad) is None


def test_bucket_wait_drains_back_to_threshold_at_10_per_second() -> None:
    assert bucket_wait(100, 200) == 0.0
    assert bucket_wait(140, 200) == 0.0
    assert bucket_wait(160, 200) == pytest.approx(2.0)
    assert bucket_wait(200, 200) == pytest.approx(6.0)
    assert bucket_wait(250, 200) == pytest.approx(6.0)  # over-full reports are capped at capacity
    assert bucket_wait(190, 200, threshold=0.5) == pytest.approx(9.0)


def test_parse_retry_after_http_date_and_seconds() -> None:
    now = datetime(2024, 7, 1, 12, 1, 0, tzinfo=UTC).timestamp()
    # whole-second dates get 1 s of slack: the server may have truncated the instant
    assert parse_retry_after("Mon, 01 Jul 2024 12:01:11 GMT", now) == pytest.approx(12.0)
    assert parse_retry_after("Mon, 01 Jul 2024 12:01:11 GMT", now, date_slack=0) == pytest.approx(11.0)
    assert parse_retry_after("Mon, 01 Jul 2024 12:01:00 GMT", now + 0.4) == pytest.approx(0.6)
    assert parse_retry_after("Mon, 01 Jul 2024 12:00:00 GMT", now) == 0.0  # past -> 0, caller backs off
    assert parse_retry_after("5", now) == 5.0
    assert parse_retry_after("2.5", now) == 2.5
    assert parse_retry_after("-3", now) == 0.0
    for bad in (None, "", "soon", "nan"):
        assert parse_retry_after(bad, now) is None


def test_backoff_full_jitter_is_bounded_and_seedable() -> None:
    a = [backoff_delay(k, random.Random(7)) for k in range(8)]
    b = [backoff_delay(k, random.Random(7)) for k in range(8)]
    assert a == b
    rng = random.Random(1)
    for attempt in range(12):
        for _ in range(50):
            assert 0.0 <= backoff_delay(attempt, rng, base=1.0, cap=30.0) <= min(30.0, 2**attempt)


def test_rate_limiter_pause_and_slots() -> None:
    now = [100.0]
    slept: list[float] = []

    def sleep(s: float) -> None:
        slept.append(s)
        now[0] += s

    limiter = RateLimiter(2)
    assert limiter.wait_turn(lambda: now[0], sleep) == 0.0
    limiter.pause_until(105.0)
    limiter.pause_until(103.0)  # never shortens a pause
    assert limiter.wait_turn(lambda: now[0], sleep) == pytest.approx(5.0)
    assert slept == [pytest.approx(5.0)]

    barrier = threading.Barrier(2)
    with limiter.slot():
        with limiter.slot():
            assert limiter.peak_in_flight == 2
            blocked = threading.Event()

            def third() -> None:
                barrier.wait()
                with limiter.slot():
                    blocked.set()

            t = threading.Thread(target=third)
            t.start()
            barrier.wait()
            assert not blocked.wait(0.1)  # a third slot must wait
    t.join(2)
    assert blocked.is_set() and limiter.peak_in_flight == 2


def test_shared_limiter_per_token_without_keeping_token() -> None:
    clock = lambda: 0.0  # noqa: E731
    a = shared_limiter("https://x", "secret-token-1", 3, clock)
    b = shared_limiter("https://x", "secret-token-1", 3, clock)
    c = shared_limiter("https://x", "secret-token-2", 3, clock)
    assert a is b and a is not c
    from shoptet import ratelimit

    assert not any("secret-token" in str(k) for k in ratelimit._registry.keys())


def test_format_and_parse_datetime() -> None:
    prague = timezone(timedelta(hours=2))
    assert format_datetime(datetime(2018, 5, 29, 9, 2, 27, 999, tzinfo=prague)) == "2018-05-29T09:02:27+0200"
    assert format_datetime(datetime(2018, 5, 29, 9, 0, tzinfo=UTC)) == "2018-05-29T09:00:00+0000"
    ny = timezone(timedelta(hours=-4))
    assert format_datetime(datetime(2018, 5, 29, 5, 0, tzinfo=ny)) == "2018-05-29T09:00:00+0000"
    with pytest.raises(ValueError, match="aware"):
        format_datetime(datetime(2018, 5, 29))
    parsed = parse_datetime("2018-05-29T09:02:27+0200")
    assert parsed == datetime(2018, 5, 29, 7, 2, 27, tzinfo=UTC)
    assert parse_datetime("2018-05-29T09:02:27+02:00") == parsed
    assert parse_datetime(None) is None


@pytest.mark.parametrize(
    ("status", "code", "cls", "transient"),
    [
        (400, "invalid-parameter", e.InvalidRequestError, False),
        (401, "expired-token", e.AccessTokenExpiredError, False),
        (401, "missing-access-token", e.AuthenticationError, False),
        (403, "invalid-token-no-rights", e.PermissionDeniedError, False),
        (403, "missing-module", e.MissingModuleError, False),
        (403, "required-webhook-registration", e.WebhookRegistrationRequiredError, False),
        (403, "job-detail-try-counter-exceeded-limit", e.JobPollLimitError, False),
        (404, "job-not-found", e.JobNotFoundError, False),
        (404, "customer-not-found", e.NotFoundError, False),
        (409, None, e.ConflictError, False),
        (413, None, e.PayloadTooLargeError, False),
        (422, None, e.UnprocessableError, False),
        (423, None, e.LockedError, True),
        (429, None, e.RateLimitedError, True),
        (500, None, e.ServerError, True),
        (503, None, e.ServerError, True),
        (418, None, e.ShoptetError, False),
    ],
)
def test_error_mapping(status: int, code: str | None, cls: type[e.ShoptetError], transient: bool) -> None:
    found = e.error_class(status, code)
    assert found is cls
    assert found.transient is transient


def test_snapshot_error_transience() -> None:
    assert e.TransportError.transient and e.CorruptResultError.transient
    for cls in (
        e.JobFailedError,
        e.JobDeadlineExceededError,
        e.ResultExpiredError,
        e.InsufficientDiskSpaceError,
        e.WebhookNotConfiguredError,
        e.WebhookPermissionError,
    ):
        assert cls.transient is False


def test_error_str_and_pickle() -> None:
    err = e.NotFoundError(
        "Order not found.",
        status=404,
        error_code="order-not-found",
        instance="123",
        request_id="req-1",
        path="/api/orders/123?email=someone@example.cz",
    )
    text = str(err)
    assert "404" in text and "order-not-found" in text and "Order not found." in text
    assert "req-1" in text and "/api/orders/123" in text and "example.cz" not in text
    clone = pickle.loads(pickle.dumps(err))
    assert type(clone) is e.NotFoundError and str(clone) == text and clone.status == 404

    failed = e.JobFailedError("ended", job_id="ab12cd3", status="killed", log="out of memory")
    assert "ab12cd3" in str(failed) and "killed" in str(failed) and "out of memory" in str(failed)
    assert pickle.loads(pickle.dumps(failed)).log == "out of memory"
    rl = pickle.loads(pickle.dumps(e.RateLimitedError("slow down", status=429, retry_after=3.0)))
    assert rl.retry_after == 3.0


def test_scrub() -> None:
    assert e.scrub("bad token abc-123 given", "abc-123") == "bad token *** given"
    assert e.scrub("nothing", None) == "nothing"
