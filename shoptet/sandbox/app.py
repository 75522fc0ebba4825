"""FastAPI app reproducing the Shoptet REST API behaviours of reference §11.

The gate middleware here does what Shoptet's edge does (auth, connection cap, leaky bucket, injected
faults, rights, the 423 write lock, the bucket header); the routers in ``routes/`` do what the API does
(envelope, paging, filters, shapes, snapshots and jobs), one module per resource. Handlers are sync so
slow work (writing a result file) runs in the thread pool and concurrent requests really overlap.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from .formats import http_date
from .query import ApiError
from .routes import ROUTERS
from .routes.common import error_response, request_id
from .routes.oauth import OAUTH_PATH
from .state import PathFault, SandboxState

__all__ = ["OAUTH_PATH", "create_app"]

CallNext = Callable[[Request], Awaitable[Response]]
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
RIGHT_GROUPS = (
    ("/api/orders", "orders"),
    ("/api/customers", "customers"),
    ("/api/products", "products"),
    ("/api/webhooks", "webhooks"),
    ("/api/system", "system"),
)


def create_app(state: SandboxState) -> FastAPI:
    app = FastAPI(title="Shoptet API sandbox", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.sandbox = state
    app.middleware("http")(gate)
    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    for router in ROUTERS:
        app.include_router(router)
    return app


# ---------------------------------------------------------------------- errors raised by handlers


async def api_error(request: Request, exc: ApiError) -> Response:
    return error_response(request_id(request), exc.status, exc.code, exc.message, exc.instance, exc.headers)


async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
    code = {404: "not-found", 405: "method-not-allowed"}.get(exc.status_code, "unknown-error")
    message = "Endpoint not found." if exc.status_code == 404 else str(exc.detail)
    return error_response(request_id(request), exc.status_code, code, message, request.url.path)


# ---------------------------------------------------------------------- edge: the gate middleware


def _mask(token: str) -> str:
    return f"{token[:3]}..{token[-3:]}" if len(token) > 6 else "***"


def retry_after(state: SandboxState, seconds: float) -> str:
    """A Retry-After value: whole seconds, or an HTTP-date if the limits say so."""
    secs = max(1, math.ceil(seconds))
    return str(secs) if state.limits.retry_after_seconds else http_date(state.clock.time() + secs)


def path_fault_response(state: SandboxState, rid: str, rule: PathFault, extra: dict[str, str]) -> Response:
    if rule.status == 429:
        headers = {**extra, "Retry-After": rule.retry_after or retry_after(state, 1)}
        return error_response(rid, 429, "too-many-requests", "Rate limit exceeded.", "access-token", headers)
    if rule.status == 503:
        msg = "Service is temporarily unavailable (maintenance)."
        return error_response(rid, 503, "service-unavailable", msg, "unknown", extra)
    return error_response(rid, rule.status, "unknown-error", "Internal server error.", "unknown", extra)


async def with_path_fault(
    state: SandboxState, request: Request, call_next: CallNext, rule: PathFault | None, extra: dict[str, str]
) -> Response:
    """Run the handler under a targeted fault: delay and/or fail before it, or lose its answer after it."""
    rid = request_id(request)
    if rule is not None and not rule.after:
        if rule.delay > 0:
            await asyncio.sleep(rule.delay)
        if rule.status:
            return path_fault_response(state, rid, rule, extra)
    response = await call_next(request)
    if rule is not None and rule.after:
        # the work is done (job queued, webhook stored); only the answer is lost
        if rule.delay > 0:
            await asyncio.sleep(rule.delay)
        if rule.status:
            return path_fault_response(state, rid, rule, extra)
    return response


def identify(state: SandboxState, token: str, mode: str) -> tuple[str, set[str] | None] | str:
    """(rate-limit identity, rights) of a known, valid token; else the 401 errorCode."""
    if token in state.tokens:
        return token, state.tokens[token]
    issued = state.access_tokens.get(token) if mode == "access" else None
    if issued is not None:
        oauth, expires = issued
        if state.clock.time() >= expires or oauth not in state.oauth_tokens:
            return "expired-token"
        return f"addon:{oauth}", state.oauth_tokens[oauth]  # limits per add-on installation
    return "expired-token" if mode == "access" else "invalid-token"


class Denial(Exception):
    """The edge refuses the request; ``headers`` come on top of the bucket header."""

    def __init__(self, status: int, code: str, message: str, instance: str, **headers: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.instance = status, code, message, instance
        self.headers = {k.replace("_", "-"): v for k, v in headers.items()}


def deny(state: SandboxState, rid: str, identity: str | None, denial: Denial) -> Response:
    extra = {"X-RateLimit-Bucket-Filling": state.rate.header(identity), **denial.headers}
    return error_response(rid, denial.status, denial.code, denial.message, denial.instance, extra)


def authenticate(state: SandboxState, request: Request) -> tuple[str, str, set[str] | None]:
    """(token, identity, rights) from the private or the add-on access token header; else a 401."""
    token = request.headers.get("shoptet-private-api-token")
    mode = "private"
    if not token:
        token, mode = request.headers.get("shoptet-access-token"), "access"
    if not token:
        msg = "Missing access token. Please add `Shoptet-Access-Token` header to your request."
        raise Denial(401, "missing-access-token", msg, "unknown")
    known = identify(state, token, mode)
    if known == "expired-token":
        raise Denial(401, "expired-token", "Token is expired. Please ask for new one.", "unknown")
    if isinstance(known, str):
        raise Denial(401, "invalid-token", "Invalid access token.", "access-token")
    return token, *known


def check_bucket_and_faults(state: SandboxState, identity: str) -> None:
    """The leaky bucket's verdict, then a random or counted 429/5xx fault (charged as an empty answer)."""
    wait = state.rate.wait_seconds(identity)
    if wait > 0:
        msg = "Rate limit exceeded: the request bucket is full."
        raise Denial(429, "too-many-requests", msg, "access-token", Retry_After=retry_after(state, wait))
    fault = state.take_fault()
    if fault is None:
        return
    state.rate.charge(identity, 0)
    if fault == 429:
        raise Denial(
            429, "too-many-requests", "Rate limit exceeded.", "access-token", Retry_After=retry_after(state, 1)
        )
    if fault == 503:
        raise Denial(503, "service-unavailable", "Service is temporarily unavailable (maintenance).", "unknown")
    raise Denial(500, "unknown-error", "Internal server error.", "unknown")


async def authorize(state: SandboxState, request: Request, token: str, identity: str, rights: set[str] | None) -> None:
    """Endpoint-group rights (403), then the write lock on an identical repeated write (423)."""
    path = request.url.path
    group = next((g for prefix, g in RIGHT_GROUPS if path.startswith(prefix)), None)
    if rights is not None and group is not None and group not in rights:
        msg = f'Your access token "{_mask(token)}" has no defined rights for this resource.'
        raise Denial(403, "invalid-token-no-rights", msg, "access-token")
    if request.method in WRITE_METHODS and state.write_locked(
        identity, request.method, path + "?" + request.url.query, await request.body()
    ):
        # reference §2, §9.16, §11.13: an identical write repeated within ~5 s is locked
        msg = "The same request was sent a moment ago; the resource is locked, try again later."
        raise Denial(423, "locked", msg, path)


async def admitted(state: SandboxState, request: Request, call_next: CallNext, identity: str) -> Response:
    """Run an admitted request (slow and targeted faults apply) and charge its size to the bucket."""
    if state.faults.slow_seconds > 0:
        await asyncio.sleep(state.faults.slow_seconds)
    rule = state.take_path_fault(request.method, request.url.path)
    extra = {"X-RateLimit-Bucket-Filling": state.rate.header(identity)}
    response = await with_path_fault(state, request, call_next, rule, extra)
    size = int(response.headers.get("content-length") or 0)
    response.headers["X-RateLimit-Bucket-Filling"] = state.rate.header(identity, state.rate.charge(identity, size))
    response.headers.setdefault("X-Request-ID", request_id(request))
    return response


async def gate(request: Request, call_next: CallNext) -> Response:
    """Shoptet's edge, in its order: token (401), open connections (429), bucket and injected faults
    (429/5xx), rights (403), write lock (423), then the handler under any targeted path fault."""
    state: SandboxState = request.app.state.sandbox
    rid = state.request_id()
    request.state.request_id = rid
    path = request.url.path
    if not path.startswith("/api/"):
        # result files live on the e-shop host: no auth, no limits (targeted faults still apply)
        return await with_path_fault(state, request, call_next, state.take_path_fault(request.method, path), {})
    identity: str | None = None
    try:
        token, identity, rights = authenticate(state, request)
        if not state.rate.enter(identity):  # nginx limit_conn: max 3 open requests per token
            msg = f"Too many concurrent connections for this token (max {state.limits.max_concurrent})."
            raise Denial(429, "too-many-requests", msg, "access-token")
    except Denial as denial:
        return deny(state, rid, identity, denial)
    try:
        check_bucket_and_faults(state, identity)
        await authorize(state, request, token, identity, rights)
    except Denial as denial:
        return deny(state, rid, identity, denial)
    else:
        return await admitted(state, request, call_next, identity)
    finally:
        state.rate.leave(identity)
