"""Synchronous Shoptet REST API client (httpx), safe to share between threads.

Retry, back-off and rate-limit behaviour (and the worst-case number of HTTP calls per logical request)
are documented in ``shoptet.ratelimit``. Snapshot, webhook and download helpers live in
``shoptet.snapshots``, ``shoptet.webhooks`` and ``shoptet.download``; this class exposes them as
methods so callers need only one object.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
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
from shoptet.oauth import AddonTokenSource
from shoptet.ratelimit import (
    Clock,
    RetryPolicy,
    Sleep,
    SlotProvider,
    backoff_delay,
    bucket_wait,
    parse_bucket_filling,
    parse_retry_after,
    shared_limiter,
    token_fingerprint,
)
from shoptet.timefmt import format_datetime
from shoptet.tls import tls_context

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
        max_retry_after: float = 3600.0,
        clock: Clock = time.time,
        sleep: Sleep = time.sleep,
        rng: random.Random | None = None,
        transport: httpx.BaseTransport | None = None,
        token_source: AddonTokenSource | None = None,
        slot_provider: SlotProvider | None = None,
    ) -> None:
        if token_source is not None:
            token_kind = "access"  # add-on: short-lived API access tokens from the OAuth server
            identity = f"addon:{token_source.fingerprint}"
        elif not token:
            raise ValueError("Shoptet API token is empty: set HUB_SHOPTET_TOKEN")
        else:
            identity = token
        if token_kind not in _TOKEN_HEADERS:
            raise ValueError(f"token_kind must be 'private' or 'access', not {token_kind!r}")
        self.base_url = base_url.rstrip("/")
        self.token_kind: TokenKind = token_kind
        self.__token = token  # name-mangled and never in repr/logs/errors
        self._token_source = token_source
        self.policy = RetryPolicy(
            max_retries=max_retries, max_429_retries=max_429_retries, max_retry_after=max_retry_after
        )
        self.clock = clock
        self.sleep = sleep
        self.rng = rng or random.Random()
        #: Names the token (or the add-on installation) in lock keys and logs; not reversible.
        self.token_fingerprint = token_fingerprint(self.base_url, identity)
        self.limiter = shared_limiter(self.base_url, identity, max_connections, clock)
        self.slot_provider = slot_provider
        self._scope = threading.local()
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        # The token is added per request (not as a default header) so no other request can carry it.
        self._http = httpx.Client(
            base_url=self.base_url,
            timeout=timeout,
            limits=limits,
            transport=transport,
            verify=tls_context(),
            headers={"Content-Type": "application/json", "Accept": "application/json"},
            follow_redirects=False,
        )
        # Result files are bearer links on another host: a separate client without any credentials.
        self._download_http = httpx.Client(
            timeout=timeout, transport=transport, verify=tls_context(), follow_redirects=True
        )
        self._job_requested_at: dict[str, float] = {}
        self._poll_counters: dict[str, snapshots.LocalPollCounter] = {}
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

    def use_slot_provider(self, provider: SlotProvider | None) -> ShoptetClient:
        """Hold a cross-process connection slot (e.g. ``db.api_slots``) around every API call."""
        self.slot_provider = provider
        return self

    @contextlib.contextmanager
    def deadline(self, at: float | None) -> Iterator[None]:
        """Calls made inside (by this thread) must be done by clock time ``at``: a ``Retry-After``
        reaching past it raises ``RateLimitedError`` at once instead of sleeping past the deadline."""
        saved = getattr(self._scope, "deadline", None)
        self._scope.deadline = at if saved is None or at is None else min(at, saved)
        try:
            yield
        finally:
            self._scope.deadline = saved

    def _auth_token(self) -> str:
        return self._token_source.token() if self._token_source is not None else self.__token

    def _scrub(self, text: str) -> str:
        secrets = [self.__token, *(self._token_source.secrets() if self._token_source else ())]
        for secret in secrets:
            text = e.scrub(text, secret)
        return text

    def _cross_process_slot(self) -> contextlib.AbstractContextManager[None]:
        if self.slot_provider is None:
            return contextlib.nullcontext()
        return self.slot_provider.slot(self.token_fingerprint)

    # --- core request ---------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Params | None = None,
        json: Any = None,
        max_transient_retries: int | None = None,
    ) -> ApiResponse:
        """One logical API call with rate limiting and bounded retries; raises a ``ShoptetError``.

        ``max_transient_retries`` overrides the policy's (0: the caller handles 5xx/timeouts itself,
        e.g. a snapshot request that must not create a second job).
        """
        if not path.startswith("/api/"):
            raise ValueError(f"API paths start with /api/: {path!r}")
        query = encode_params(params)
        content = orjson.dumps(json) if json is not None else None
        max_transient = self.policy.max_retries if max_transient_retries is None else max_transient_retries
        transient_retries = 0
        rate_retries = 0
        refreshed = False
        while True:
            self.limiter.wait_turn(self.clock, self.sleep)
            token = self._auth_token()
            headers = {_TOKEN_HEADERS[self.token_kind]: token}
            try:
                with self.limiter.slot(), self._cross_process_slot():
                    response = self._http.request(method, path, params=query, content=content, headers=headers)
            except (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError) as exc:
                if transient_retries < max_transient:
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
            if isinstance(error, e.AccessTokenExpiredError) and self._token_source and not refreshed:
                # Expired before our own refresh margin (clock skew, revoked): one fresh token, once.
                log.info("Shoptet %s %s: API access token expired; obtaining a new one", method, path)
                self._token_source.invalidate(token)
                refreshed = True
                continue
            if isinstance(error, e.RateLimitedError):
                if rate_retries < self.policy.max_429_retries:
                    self._wait_after_429(error, rate_retries, method, path)
                    rate_retries += 1
                    continue
            elif isinstance(error, e.LockedError) and transient_retries < max_transient:
                self._wait_after_423(transient_retries, max_transient, method, path)
                transient_retries += 1
                continue
            elif error.transient and transient_retries < max_transient:
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

    def _wait_after_423(self, attempt: int, budget: int, method: str, path: str) -> None:
        delay = self.policy.lock_wait + self.rng.uniform(0.0, 1.0)
        log.warning(
            "Shoptet %s %s: 423 locked (identical write within ~5 s), retry %d/%d in %.1fs",
            method,
            path,
            attempt + 1,
            budget,
            delay,
        )
        self.sleep(delay)

    def _wait_after_429(self, error: e.RateLimitedError, attempt: int, method: str, path: str) -> None:
        wait = error.retry_after
        if not wait:  # missing, unparsable or in the past (clock skew): back off instead
            wait = backoff_delay(attempt, self.rng, base=self.policy.backoff_base, cap=self.policy.backoff_cap)
        # Honour the whole wait (retrying early only earns another 429); if it reaches past what we may
        # wait - the caller's deadline or max_retry_after - give up now instead of retrying early.
        limit, why = self.policy.max_retry_after, f"max_retry_after ({self.policy.max_retry_after:.0f}s)"
        deadline = getattr(self._scope, "deadline", None)
        if deadline is not None and deadline - self.clock() < limit:
            limit, why = max(0.0, deadline - self.clock()), "the time left before the deadline"
        if wait > limit:
            self.limiter.pause_until(self.clock() + wait)  # callers without a deadline still wait it out
            raise e.RateLimitedError(
                f"{error.message}; Shoptet asks to wait {wait:.0f}s, more than {why}",
                retry_after=wait,
                status=error.status,
                error_code=error.error_code,
                instance=error.instance,
                request_id=error.request_id,
                path=error.path,
            )
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
                self._scrub(str(errors)[:500]),
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
        message = self._scrub(message)
        instance = self._scrub(str(instance)) if instance is not None else None
        cls = e.error_class(status, code)
        kw: dict[str, Any] = dict(status=status, error_code=code, instance=instance, request_id=request_id, path=path)
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

    def request_snapshot(self, entity: str, params: Params | None = None, *, reuse_since: float | None = None) -> str:
        return snapshots.request_snapshot(self, entity, params, reuse_since=reuse_since)

    def _poll_counter(self, job_id: str) -> snapshots.LocalPollCounter:
        """This client's own detail-poll count of a job (used when the caller injects no counter)."""
        return self._poll_counters.setdefault(job_id, snapshots.LocalPollCounter())

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
