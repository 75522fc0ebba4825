"""Synchronous Shoptet REST API client (httpx), safe to share between threads.

Retry, back-off and rate-limit behaviour (and the worst-case number of HTTP calls per logical request)
are documented in ``shoptet.ratelimit``. Snapshot, webhook and download helpers live in
``shoptet.snapshots``, ``shoptet.webhooks`` and ``shoptet.download``; this class exposes them as
methods so callers need only one object.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

import httpx
import orjson

from shoptet import download, snapshots, webhooks
from shoptet import errors as e
from shoptet.ratelimit import (
    Clock,
    RetryPolicy,
    Sleep,
    backoff_delay,
    bucket_wait,
    parse_bucket_filling,
    parse_retry_after,
    shared_limiter,
)
from shoptet.timefmt import format_datetime

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.myshoptet.com"
TokenKind = Literal["private", "access"]
_TOKEN_HEADERS: dict[str, str] = {
    "private": "Shoptet-Private-API-Token",
    "access": "Shoptet-Access-Token",
}

#: Per-endpoint maximum ``itemsPerPage`` (reference §4, §6, §11.5).
ORDERS_PER_PAGE = 50
CHANGES_PER_PAGE = {"orders": 1000, "customers": 20, "products": 1000}
CHANGE_KEY = {"orders": "code", "customers": "guid", "products": "guid"}
#: How often a paged listing starts over when ``totalCount`` moves under it.
MAX_PAGING_RESTARTS = 3

ParamValue = str | int | float | bool | datetime | date | Iterable[str] | None
Params = Mapping[str, ParamValue]


@dataclass(frozen=True)
class ApiResponse:
    """A successful response: the envelope's ``data`` plus what is useful for logs and support."""

    status: int
    data: Any
    errors: list[dict[str, Any]] | None
    request_id: str | None
    headers: httpx.Headers


def encode_params(params: Params | None) -> dict[str, str]:
    """Query parameters as Shoptet expects them: ``+hhmm`` date-times, comma-joined lists, no Nones."""
    out: dict[str, str] = {}
    for key, value in (params or {}).items():
        if value is None:
            continue
        if isinstance(value, datetime):
            out[key] = format_datetime(value)
        elif isinstance(value, date):
            out[key] = value.isoformat()
        elif isinstance(value, bool):
            out[key] = "true" if value else "false"
        elif isinstance(value, str | int | float):
            out[key] = str(value)
        else:
            out[key] = ",".join(str(v) for v in value)
    return out


class ShoptetClient:
    """Shoptet API client: auth, envelope, typed errors, rate limits, paging, snapshots."""

    def __init__(
        self,
        base_url: str = DEFAULT_BASE_URL,
        token: str = "",
        *,
        token_kind: TokenKind = "private",
        timeout: float = 30.0,
        max_connections: int = 3,
        max_retries: int = 4,
        max_429_retries: int = 8,
        clock: Clock = time.time,
        sleep: Sleep = time.sleep,
        rng: random.Random | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if not token:
            raise ValueError("Shoptet API token is empty: set HUB_SHOPTET_TOKEN")
        if token_kind not in _TOKEN_HEADERS:
            raise ValueError(f"token_kind must be 'private' or 'access', not {token_kind!r}")
        self.base_url = base_url.rstrip("/")
        self.token_kind: TokenKind = token_kind
        self.__token = token  # name-mangled and never in repr/logs/errors
        self.policy = RetryPolicy(max_retries=max_retries, max_429_retries=max_429_retries)
        self.clock = clock
        self.sleep = sleep
        self.rng = rng or random.Random()
        self.limiter = shared_limiter(self.base_url, token, max_connections, clock)
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        # The token is added per request (not as a default header) so no other request can carry it.
        self._http = httpx.Client(
            base_url=self.base_url,
            timeout=timeout,
            limits=limits,
            transport=transport,
            headers={"Content-Type": "application/json", "Accept": "application/json"},
            follow_redirects=False,
        )
        # Result files are bearer links on another host: a separate client without any credentials.
        self._download_http = httpx.Client(timeout=timeout, transport=transport, follow_redirects=True)
        self._job_requested_at: dict[str, float] = {}
        self._deprecation_warned: set[str] = set()

    # --- lifecycle ------------------------------------------------------------------------------

    def close(self) -> None:
        self._http.close()
        self._download_http.close()

    def __enter__(self) -> ShoptetClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ShoptetClient(base_url={self.base_url!r}, token_kind={self.token_kind!r}, token='***')"

    def __reduce__(self) -> Any:
        raise TypeError("ShoptetClient is not picklable (it holds a secret and open connections)")

    # --- core request ---------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Params | None = None,
        json: Any = None,
    ) -> ApiResponse:
        """One logical API call with rate limiting and bounded retries; raises a ``ShoptetError``."""
        if not path.startswith("/api/"):
            raise ValueError(f"API paths start with /api/: {path!r}")
        query = encode_params(params)
        content = orjson.dumps(json) if json is not None else None
        headers = {_TOKEN_HEADERS[self.token_kind]: self.__token}
        transient_retries = 0
        rate_retries = 0
        while True:
            self.limiter.wait_turn(self.clock, self.sleep)
            try:
                with self.limiter.slot():
                    response = self._http.request(
                        method, path, params=query, content=content, headers=headers
                    )
            except (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError) as exc:
                if transient_retries < self.policy.max_retries:
                    self._backoff(transient_retries, f"{type(exc).__name__}", method, path)
                    transient_retries += 1
                    continue
                raise e.TransportError(
                    f"{method} failed after {transient_retries + 1} attempts: {type(exc).__name__}: {exc}",
                    path=path,
                ) from exc
            except httpx.HTTPError as exc:  # e.g. unsupported protocol: retrying cannot help
                raise e.ShoptetError(f"{method} failed: {type(exc).__name__}: {exc}", path=path) from exc

            self._observe_bucket(response)
            if response.is_success:
                return self._parse_success(response, path)
            error = self._error_from(response, path)
            if isinstance(error, e.RateLimitedError):
                if rate_retries < self.policy.max_429_retries:
                    self._wait_after_429(error, rate_retries, method, path)
                    rate_retries += 1
                    continue
            elif error.transient and transient_retries < self.policy.max_retries:
                self._backoff(transient_retries, f"HTTP {response.status_code}", method, path)
                transient_retries += 1
                continue
            raise error

    def get(self, path: str, params: Params | None = None) -> Any:
        """GET and return the envelope's ``data``."""
        return self.request("GET", path, params=params).data

    # --- request helpers ------------------------------------------------------------------------

    def _backoff(self, attempt: int, reason: str, method: str, path: str) -> None:
        delay = backoff_delay(attempt, self.rng, base=self.policy.backoff_base, cap=self.policy.backoff_cap)
        log.warning(
            "Shoptet %s %s: %s, retry %d/%d in %.1fs",
            method,
            path,
            reason,
            attempt + 1,
            self.policy.max_retries,
            delay,
        )
        self.sleep(delay)

    def _wait_after_429(self, error: e.RateLimitedError, attempt: int, method: str, path: str) -> None:
        wait = error.retry_after
        if not wait:  # missing, unparsable or in the past (clock skew): back off instead
            wait = backoff_delay(
                attempt, self.rng, base=self.policy.backoff_base, cap=self.policy.backoff_cap
            )
        wait = min(wait, self.policy.max_retry_after)
        log.warning(
            "Shoptet %s %s: 429 rate limited, retry %d/%d in %.1fs (request_id=%s)",
            method,
            path,
            attempt + 1,
            self.policy.max_429_retries,
            wait,
            error.request_id,
        )
        # Pause every thread sharing the token: they would all hit the same full bucket.
        self.limiter.pause_until(self.clock() + wait)

    def _observe_bucket(self, response: httpx.Response) -> None:
        filling = parse_bucket_filling(response.headers.get("X-RateLimit-Bucket-Filling"))
        if filling is None:
            return
        wait = bucket_wait(*filling, threshold=self.policy.bucket_threshold)
        if wait > 0:
            log.debug("Shoptet bucket %g/%g: pausing %.1fs", filling[0], filling[1], wait)
            self.limiter.pause_until(self.clock() + wait)

    def _parse_success(self, response: httpx.Response, path: str) -> ApiResponse:
        request_id = response.headers.get("X-Request-ID")
        if response.headers.get("X-Shoptet-Deprecated") and path not in self._deprecation_warned:
            self._deprecation_warned.add(path)
            log.warning("Shoptet marks %s deprecated (Sunset: %s)", path, response.headers.get("Sunset"))
        if not response.content:
            return ApiResponse(response.status_code, None, None, request_id, response.headers)
        try:
            body = orjson.loads(response.content)
        except orjson.JSONDecodeError as exc:
            raise e.ProtocolError(
                f"HTTP {response.status_code} response is not JSON",
                status=response.status_code,
                request_id=request_id,
                path=path,
            ) from exc
        if not isinstance(body, dict):
            raise e.ProtocolError("response is not a JSON envelope", status=response.status_code, path=path)
        request_id = _envelope_request_id(body) or request_id
        errors = body.get("errors") or None
        if errors:  # batch writes report skipped rows with 200; GETs should not
            log.warning(
                "Shoptet %s returned errors with HTTP %d: %s",
                path,
                response.status_code,
                e.scrub(str(errors)[:500], self.__token),
            )
        return ApiResponse(response.status_code, body.get("data"), errors, request_id, response.headers)

    def _error_from(self, response: httpx.Response, path: str) -> e.ShoptetError:
        status = response.status_code
        request_id = response.headers.get("X-Request-ID")
        code = instance = None
        message = response.reason_phrase or f"HTTP {status}"
        try:
            body = orjson.loads(response.content) if response.content else None
        except orjson.JSONDecodeError:
            body = None  # 429/5xx from a proxy may be HTML
        if isinstance(body, dict):
            request_id = _envelope_request_id(body) or request_id
            items = [x for x in (body.get("errors") or []) if isinstance(x, dict)]
            if items:
                code = items[0].get("errorCode")
                message = str(items[0].get("message") or message)
                instance = items[0].get("instance")
                if len(items) > 1:
                    others = ", ".join(str(x.get("errorCode")) for x in items[1:4])
                    message += f" (+{len(items) - 1} more: {others})"
        message = e.scrub(message, self.__token)
        instance = e.scrub(str(instance), self.__token) if instance is not None else None
        cls = e.error_class(status, code)
        kw: dict[str, Any] = dict(
            status=status, error_code=code, instance=instance, request_id=request_id, path=path
        )
        if cls is e.RateLimitedError:
            retry_after = parse_retry_after(response.headers.get("Retry-After"), self.clock())
            return e.RateLimitedError(message, retry_after=retry_after, **kw)
        return cls(message, **kw)

    # --- paging ---------------------------------------------------------------------------------

    def iter_pages(
        self,
        path: str,
        list_key: str,
        *,
        params: Params | None = None,
        per_page: int,
        key: Callable[[dict[str, Any]], Any],
    ) -> Iterator[dict[str, Any]]:
        """Yield the items of a paged list once each.

        Items can shift between pages while we read (OA advises re-checking ``totalCount``). When the
        total changes we start over from page 1, skipping items already yielded (by ``key``), at most
        ``MAX_PAGING_RESTARTS`` times; after that we continue to the end and log it. Memory: one key
        per yielded item.
        """
        seen: set[Any] = set()
        restarts = 0
        page = 1
        total: int | None = None
        while True:
            data = self.get(path, {**(params or {}), "page": page, "itemsPerPage": per_page}) or {}
            items = data.get(list_key) or []
            paginator = data.get("paginator") or {}
            count = paginator.get("totalCount")
            for item in items:
                item_key = key(item)
                if item_key not in seen:
                    seen.add(item_key)
                    yield item
            if total is not None and count != total:
                if restarts < MAX_PAGING_RESTARTS:
                    restarts += 1
                    log.info("%s: totalCount %s -> %s on page %d, rescanning", path, total, count, page)
                    total, page = count, 1
                    continue
                log.warning("%s: totalCount keeps changing; finishing without rescan", path)
            total = count
            page_count = paginator.get("pageCount")
            done = page >= page_count if isinstance(page_count, int) else len(items) < per_page
            if done or not items:
                return
            page += 1

    def iter_orders(self, params: Params | None = None) -> Iterator[dict[str, Any]]:
        """``GET /api/orders`` (list shape: no items, no externalCode), 50 per page."""
        return self.iter_pages(
            "/api/orders", "orders", params=params, per_page=ORDERS_PER_PAGE, key=lambda o: o.get("code")
        )

    def iter_changes(
        self,
        entity: str,
        from_dt: datetime,
        change_type: str | None = None,
    ) -> Iterator[dict[str, Any]]:
        """``GET /api/{entity}/changes?from=``: ``{code|guid, changeTime, changeType}`` items."""
        if entity not in CHANGES_PER_PAGE:
            raise ValueError(f"entity must be one of {sorted(CHANGES_PER_PAGE)}, not {entity!r}")
        id_field = CHANGE_KEY[entity]
        return self.iter_pages(
            f"/api/{entity}/changes",
            "changes",
            params={"from": from_dt, "changeType": change_type},
            per_page=CHANGES_PER_PAGE[entity],
            key=lambda c: (c.get(id_field), c.get("changeTime"), c.get("changeType")),
        )

    # --- details --------------------------------------------------------------------------------

    def get_order(self, code: str, include: str | Iterable[str] | None = None) -> dict[str, Any]:
        data = self.get(f"/api/orders/{_segment(code)}", {"include": include})
        return data["order"]

    def get_customer(self, guid: str) -> dict[str, Any]:
        return self.get(f"/api/customers/{_segment(guid)}")["customer"]

    def get_product(self, guid: str, include: str | Iterable[str] | None = None) -> dict[str, Any]:
        return self.get(f"/api/products/{_segment(guid)}", {"include": include})  # not wrapped (§9.11)

    # --- webhooks, snapshots, downloads (thin wrappers) -----------------------------------------

    def list_webhooks(self) -> list[dict[str, Any]]:
        return webhooks.list_webhooks(self)

    def ensure_job_finished_webhook(self, url: str | None) -> dict[str, Any]:
        return webhooks.ensure_job_finished_webhook(self, url)

    def request_snapshot(self, entity: str, params: Params | None = None) -> str:
        return snapshots.request_snapshot(self, entity, params)

    def get_job(self, job_id: str) -> snapshots.Job:
        return snapshots.get_job(self, job_id)

    def wait_for_job(self, job_id: str, deadline_seconds: float = 3600.0, **kw: Any) -> snapshots.Job:
        return snapshots.wait_for_job(self, job_id, deadline_seconds, **kw)

    def download_result(
        self,
        job_or_url: snapshots.Job | str,
        dest_dir: str | Path,
        *,
        min_free_bytes: int = download.DEFAULT_MIN_FREE_BYTES,
    ) -> Path:
        return download.download_result(
            job_or_url, dest_dir, http=self._download_http, clock=self.clock, min_free_bytes=min_free_bytes
        )


def _segment(value: str) -> str:
    """Quote one path segment (order codes may contain letters, dashes or slashes)."""
    if not value:
        raise ValueError("empty identifier")
    return quote(str(value), safe="")


def _envelope_request_id(body: dict[str, Any]) -> str | None:
    metadata = body.get("metadata")
    if isinstance(metadata, dict) and metadata.get("requestId"):
        return str(metadata["requestId"])
    return None
