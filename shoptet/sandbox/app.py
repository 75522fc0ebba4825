"""FastAPI app reproducing the Shoptet REST API behaviours of reference §11.

The gate middleware does what Shoptet's edge does (auth, connection cap, leaky bucket, injected
faults, rights, the bucket header); handlers do what the API does (envelope, paging, filters,
shapes, snapshots and jobs). Handlers are sync so slow work (writing a result file) runs in the
thread pool and concurrent requests really overlap.
"""

from __future__ import annotations

import asyncio
import math
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from .formats import fmt_dt, http_date
from .jobs import TERMINAL, Job
from .query import (
    CUSTOMER_SNAPSHOT_FILTERS,
    ORDER_FILTERS,
    PAGING,
    PRODUCT_FILTERS,
    ApiError,
    Params,
    customer_list_filter,
    customer_snapshot_filter,
    invalid,
    order_filter,
    paginate,
    product_filter,
)
from .render import (
    MISSING_MODULES,
    ORDER_DETAIL_INCLUDES,
    ORDER_SNAPSHOT_INCLUDES,
    PRODUCT_INCLUDES,
    PRODUCT_LIST_INCLUDES,
    customer_list_item,
    order_list_item,
    parse_includes,
    product_list_item,
    render_order,
    render_product,
)
from .state import PathFault, SandboxState
from .store import Record
from .vocab import ORDER_STATUSES, STATUS_META
from .webhooks import EVENTS, WebhookExists

JSON_CT = "application/json; charset=utf-8"
OAUTH_PATH = "/action/ApiOAuthServer/getAccessToken"
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
RIGHT_GROUPS = (
    ("/api/orders", "orders"),
    ("/api/customers", "customers"),
    ("/api/products", "products"),
    ("/api/webhooks", "webhooks"),
    ("/api/system", "system"),
)


def _body(request_id: str, data: object, errors: list[dict] | None) -> bytes:
    return orjson.dumps({"data": data, "errors": errors, "metadata": {"requestId": request_id}})


def _error_response(
    request_id: str,
    status: int,
    code: str,
    message: str,
    instance: str = "unknown",
    headers: dict[str, str] | None = None,
) -> Response:
    body = _body(request_id, None, [{"errorCode": code, "message": message, "instance": instance}])
    return Response(body, status, media_type=JSON_CT, headers={"X-Request-ID": request_id, **(headers or {})})


def _rid(request: Request) -> str:
    return getattr(request.state, "request_id", None) or "00000000-0000-7000-8000-000000000000"


def ok(request: Request, data: object, status: int = 200) -> Response:
    rid = _rid(request)
    return Response(_body(rid, data, None), status, media_type=JSON_CT, headers={"X-Request-ID": rid})


def _mask(token: str) -> str:
    return f"{token[:3]}..{token[-3:]}" if len(token) > 6 else "***"


def create_app(state: SandboxState) -> FastAPI:
    app = FastAPI(title="Shoptet API sandbox", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.sandbox = state
    store = state.store

    # ------------------------------------------------------------------ edge: gate middleware

    def retry_after(seconds: float) -> str:
        secs = max(1, math.ceil(seconds))
        return str(secs) if state.limits.retry_after_seconds else http_date(state.clock.time() + secs)

    def path_fault_response(rid: str, rule: PathFault, extra: dict[str, str]) -> Response:
        if rule.status == 429:
            headers = {**extra, "Retry-After": rule.retry_after or retry_after(1)}
            return _error_response(rid, 429, "too-many-requests", "Rate limit exceeded.", "access-token", headers)
        if rule.status == 503:
            msg = "Service is temporarily unavailable (maintenance)."
            return _error_response(rid, 503, "service-unavailable", msg, "unknown", extra)
        return _error_response(rid, rule.status, "unknown-error", "Internal server error.", "unknown", extra)

    async def with_path_fault(
        request: Request, call_next: Callable[[Request], Awaitable[Response]], rule: PathFault | None,
        extra: dict[str, str],
    ) -> Response:
        rid = _rid(request)
        if rule is not None and not rule.after:
            if rule.delay > 0:
                await asyncio.sleep(rule.delay)
            if rule.status:
                return path_fault_response(rid, rule, extra)
        response = await call_next(request)
        if rule is not None and rule.after:
            # the work is done (job queued, webhook stored); only the answer is lost
            if rule.delay > 0:
                await asyncio.sleep(rule.delay)
            if rule.status:
                return path_fault_response(rid, rule, extra)
        return response

    def identify(token: str, mode: str) -> tuple[str, set[str] | None] | str:
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

    @app.middleware("http")
    async def gate(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        rid = state.request_id()
        request.state.request_id = rid
        path = request.url.path
        if not path.startswith("/api/"):
            # result files live on the e-shop host: no auth, no limits (targeted faults still apply)
            return await with_path_fault(request, call_next, state.take_path_fault(request.method, path), {})

        identity: str | None = None

        def deny(status: int, code: str, message: str, instance: str, **headers: str) -> Response:
            filling = state.rate.header(identity)
            extra = {
                "X-RateLimit-Bucket-Filling": filling,
                **{k.replace("_", "-"): v for k, v in headers.items()},
            }
            return _error_response(rid, status, code, message, instance, extra)

        token = request.headers.get("shoptet-private-api-token")
        mode = "private"
        if not token:
            token, mode = request.headers.get("shoptet-access-token"), "access"
        if not token:
            msg = "Missing access token. Please add `Shoptet-Access-Token` header to your request."
            return deny(401, "missing-access-token", msg, "unknown")
        known = identify(token, mode)
        if isinstance(known, str):
            if known == "expired-token":
                return deny(401, "expired-token", "Token is expired. Please ask for new one.", "unknown")
            return deny(401, "invalid-token", "Invalid access token.", "access-token")
        identity, rights = known
        if not state.rate.enter(identity):  # nginx limit_conn: max 3 open requests per token
            msg = f"Too many concurrent connections for this token (max {state.limits.max_concurrent})."
            return deny(429, "too-many-requests", msg, "access-token")
        try:
            wait = state.rate.wait_seconds(identity)
            if wait > 0:
                msg = "Rate limit exceeded: the request bucket is full."
                return deny(429, "too-many-requests", msg, "access-token", Retry_After=retry_after(wait))
            fault = state.take_fault()
            if fault is not None:
                state.rate.charge(identity, 0)
                if fault == 429:
                    msg = "Rate limit exceeded."
                    return deny(429, "too-many-requests", msg, "access-token", Retry_After=retry_after(1))
                if fault == 503:
                    msg = "Service is temporarily unavailable (maintenance)."
                    return deny(503, "service-unavailable", msg, "unknown")
                return deny(500, "unknown-error", "Internal server error.", "unknown")
            group = next((g for prefix, g in RIGHT_GROUPS if path.startswith(prefix)), None)
            if rights is not None and group is not None and group not in rights:
                msg = f'Your access token "{_mask(token)}" has no defined rights for this resource.'
                return deny(403, "invalid-token-no-rights", msg, "access-token")
            if request.method in WRITE_METHODS and state.write_locked(
                identity, request.method, path + "?" + request.url.query, await request.body()
            ):
                # reference §2, §9.16, §11.13: an identical write repeated within ~5 s is locked
                msg = "The same request was sent a moment ago; the resource is locked, try again later."
                return deny(423, "locked", msg, path)
            if state.faults.slow_seconds > 0:
                await asyncio.sleep(state.faults.slow_seconds)
            rule = state.take_path_fault(request.method, path)
            response = await with_path_fault(
                request, call_next, rule, {"X-RateLimit-Bucket-Filling": state.rate.header(identity)}
            )
            size = int(response.headers.get("content-length") or 0)
            response.headers["X-RateLimit-Bucket-Filling"] = state.rate.header(
                identity, state.rate.charge(identity, size)
            )
            response.headers.setdefault("X-Request-ID", rid)
            return response
        finally:
            state.rate.leave(identity)

    # ------------------------------------------------------------------ add-on OAuth server

    @app.get(OAUTH_PATH)
    def get_access_token(request: Request) -> Response:
        """The e-shop's OAuth server (reference §1): an add-on's OAuth token -> a 30-min API token."""
        auth = request.headers.get("authorization") or ""
        scheme, _, oauth = auth.partition(" ")
        if scheme.lower() != "bearer" or oauth.strip() not in state.oauth_tokens:
            body = {"error": "invalid_token", "error_description": "The OAuth access token is not valid."}
            return Response(orjson.dumps(body), 401, media_type=JSON_CT)
        issued = state.issue_access_token(oauth.strip())
        if issued is None:
            body = {
                "error": "maximum_tokens_reached",
                "error_description": f"Maximum of {state.max_access_tokens} valid access tokens reached.",
            }
            return Response(orjson.dumps(body), 400, media_type=JSON_CT)
        token, ttl = issued
        body = {"access_token": token, "expires_in": int(ttl), "token_type": "bearer"}
        return Response(orjson.dumps(body), 200, media_type=JSON_CT)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> Response:
        return _error_response(_rid(request), exc.status, exc.code, exc.message, exc.instance, exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        code = {404: "not-found", 405: "method-not-allowed"}.get(exc.status_code, "unknown-error")
        message = "Endpoint not found." if exc.status_code == 404 else str(exc.detail)
        return _error_response(_rid(request), exc.status_code, code, message, request.url.path)

    # ------------------------------------------------------------------ helpers

    def select_orders(p: Params) -> list[Record]:
        codes, pred = order_filter(p)
        if codes is not None:
            return [r for r in (store.record("orders", c) for c in codes) if r is not None]
        recs = store.records("orders")
        return recs if pred is None else [r for r in recs if pred(r)]

    def select_products(p: Params) -> list[Record]:
        codes, guids, pred = product_filter(p)
        if guids is not None:
            return [r for r in (store.record("products", g) for g in guids) if r is not None]
        recs = store.records("products")
        if codes is not None:
            wanted = set(codes)
            return [r for r in recs if wanted.intersection(r.idx.codes)]
        return recs if pred is None else [r for r in recs if pred(r)]

    def select_customers(
        p: Params, pred_factory: Callable[[Params], Callable[[Record], bool] | None]
    ) -> list[Record]:
        pred = pred_factory(p)
        recs = store.records("customers")
        return recs if pred is None else [r for r in recs if pred(r)]

    def includes(p: Params, allowed: frozenset[str]) -> frozenset[str]:
        try:
            inc = parse_includes(p.string("include"), allowed)
        except ValueError as exc:
            raise invalid("include", f'Invalid "include" parameter. Unsupported value "{exc}".') from None
        for name, module in MISSING_MODULES.items():
            if name in inc:
                raise ApiError(
                    403, "missing-module", f'Module "{module}" is not active for this e-shop.', "include"
                )
        return inc

    def base_url(request: Request) -> str:
        return (state.base_url or str(request.base_url)).rstrip("/")

    def changes(request: Request, entity: str, key_name: str, default: int, maximum: int) -> Response:
        p = Params(request.query_params, frozenset({"from", "changeType"}) | PAGING)
        since = p.datetime("from")
        if since is None:
            raise ApiError(400, "missing-parameter", 'Missing value for parameter "from".', "from")
        change_type = p.string("changeType")
        if change_type is not None and change_type not in ("add", "edit", "delete"):
            raise invalid(
                "changeType", 'Invalid "changeType" parameter. Supported values are "edit", "delete".'
            )
        page, per = p.paging(default, maximum)
        rows, paginator = paginate(store.changes(entity, since, change_type), page, per)
        return ok(
            request,
            {
                "changes": [{key_name: k, "changeTime": fmt_dt(t), "changeType": ct} for k, t, ct in rows],
                "paginator": paginator,
            },
        )

    def snapshot(
        request: Request, entity: str, records: list[Record], inc: frozenset[str], p: Params
    ) -> Response:
        # a job:finished webhook is required even if the client only polls (reference §5.2)
        if state.webhooks.for_event("job:finished") is None:
            raise ApiError(
                403,
                "required-webhook-registration",
                "Webhook for job:finished is not registered.",
                "job:finished",
            )
        job = state.jobs.create(
            request.url.path,
            entity,
            inc,
            records,
            state.job_seconds,
            state.faults.job_outcome,
            p.string("language"),
        )
        return ok(request, {"jobId": job.job_id}, 202)

    # ------------------------------------------------------------------ orders

    @app.get("/api/orders")
    def list_orders(request: Request) -> Response:
        p = Params(request.query_params, ORDER_FILTERS | PAGING)
        page, per = p.paging(50, 50)
        rows, paginator = paginate(select_orders(p), page, per)
        return ok(request, {"orders": [order_list_item(r.data()) for r in rows], "paginator": paginator})

    @app.get("/api/orders/snapshot")
    def orders_snapshot(request: Request) -> Response:
        p = Params(request.query_params, ORDER_FILTERS | {"include"})
        inc = includes(p, ORDER_SNAPSHOT_INCLUDES)
        return snapshot(request, "orders", select_orders(p), inc, p)

    @app.get("/api/orders/changes")
    def order_changes(request: Request) -> Response:
        return changes(request, "orders", "code", 20, 1000)

    @app.get("/api/orders/statuses")
    def order_statuses(request: Request) -> Response:
        Params(request.query_params, frozenset())
        statuses = [
            {
                "id": sid,
                "name": ORDER_STATUSES[sid],
                "system": system,
                "order": order,
                "markAsPaid": paid,
                "color": color,
                "backgroundColor": bg,
                "changeOrderItems": True,
                "stockClaimResolved": sid == -3,
                "documents": {},
            }
            for sid, system, order, paid, color, bg in STATUS_META
        ]
        return ok(request, {"defaultStatus": -1, "statuses": statuses})

    @app.get("/api/orders/{code}")
    def order_detail(request: Request, code: str) -> Response:
        p = Params(request.query_params, frozenset({"include"}))
        inc = includes(p, ORDER_DETAIL_INCLUDES)
        order = store.get("orders", code)
        if order is None:
            raise ApiError(404, "order-not-found", f'Order "{code}" not found.', code)
        return ok(request, {"order": render_order(order, inc, state.amount_as_number)})

    # ------------------------------------------------------------------ customers

    @app.get("/api/customers")
    def list_customers(request: Request) -> Response:
        p = Params(request.query_params, frozenset({"email", "phone"}) | PAGING)
        page, per = p.paging(20, 1000)
        rows, paginator = paginate(select_customers(p, customer_list_filter), page, per)
        return ok(
            request, {"customers": [customer_list_item(r.data()) for r in rows], "paginator": paginator}
        )

    @app.get("/api/customers/snapshot")
    def customers_snapshot(request: Request) -> Response:
        p = Params(request.query_params, CUSTOMER_SNAPSHOT_FILTERS)
        return snapshot(request, "customers", select_customers(p, customer_snapshot_filter), frozenset(), p)

    @app.get("/api/customers/changes")
    def customer_changes(request: Request) -> Response:
        return changes(request, "customers", "guid", 20, 20)

    @app.get("/api/customers/{guid}")
    def customer_detail(request: Request, guid: str) -> Response:
        Params(request.query_params, frozenset())
        customer = store.get("customers", guid)
        if customer is None:
            raise ApiError(404, "customer-not-found", f'Customer with guid "{guid}" not found', guid)
        return ok(request, {"customer": customer})

    # ------------------------------------------------------------------ products

    @app.get("/api/products")
    def list_products(request: Request) -> Response:
        p = Params(request.query_params, PRODUCT_FILTERS | PAGING | {"include"})
        inc = includes(p, PRODUCT_LIST_INCLUDES)
        page, per = p.paging(20, 1000)
        rows, paginator = paginate(select_products(p), page, per)
        return ok(
            request, {"products": [product_list_item(r.data(), inc) for r in rows], "paginator": paginator}
        )

    @app.get("/api/products/snapshot")
    def products_snapshot(request: Request) -> Response:
        p = Params(request.query_params, PRODUCT_FILTERS | {"include"})
        inc = includes(p, PRODUCT_INCLUDES)
        return snapshot(request, "products", select_products(p), inc, p)

    @app.get("/api/products/changes")
    def product_changes(request: Request) -> Response:
        return changes(request, "products", "guid", 1000, 1000)

    @app.get("/api/products/{guid}")
    def product_detail(request: Request, guid: str) -> Response:
        p = Params(request.query_params, frozenset({"include"}))
        inc = includes(p, PRODUCT_INCLUDES)
        product = store.get("products", guid)
        if product is None:
            raise ApiError(404, "product-not-found", f'Product with guid "{guid}" not found.', guid)
        return ok(request, render_product(product, inc))  # product detail is not wrapped (reference §6)

    # ------------------------------------------------------------------ webhooks

    @app.get("/api/webhooks")
    def list_webhooks(request: Request) -> Response:
        p = Params(request.query_params, PAGING)
        page, per = p.paging(50, 50)
        rows, paginator = paginate(state.webhooks.list(), page, per)
        return ok(request, {"webhooks": [h.to_api() for h in rows], "paginator": paginator})

    @app.post("/api/webhooks")
    async def register_webhooks(request: Request) -> Response:
        Params(request.query_params, frozenset())
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            raise ApiError(422, "invalid-request-data", "Request body is not valid JSON.", "data") from None
        items = body.get("data") if isinstance(body, dict) else None
        if not isinstance(items, list) or not items:
            raise ApiError(422, "invalid-request-data", 'Expected "data" to be a non-empty array.', "data")
        if len(items) > 50:
            raise ApiError(
                413, "invalid-request-data", "At most 50 webhooks can be registered at once.", "data"
            )
        parsed: list[tuple[str, str, str | None]] = []
        for i, item in enumerate(items):
            if not isinstance(item, dict):
                raise ApiError(422, "invalid-request-data", "Webhook must be an object.", f"data.{i}")
            event, url, send = item.get("event"), item.get("url"), item.get("sendPayload")
            if event not in EVENTS:
                raise ApiError(
                    400, "invalid-request-data", f'Unsupported webhook event "{event}".', f"data.{i}.event"
                )
            if not isinstance(url, str) or not url.startswith(("http://", "https://")) or len(url) > 2000:
                raise ApiError(
                    400,
                    "invalid-request-data",
                    "Webhook URL must be an http(s) URL of at most 2000 characters.",
                    f"data.{i}.url",
                )
            if send not in ("full", None):
                raise ApiError(
                    400,
                    "invalid-request-data",
                    'sendPayload must be "full" or null.',
                    f"data.{i}.sendPayload",
                )
            parsed.append((event, url, send))
        try:
            hooks = state.webhooks.register_many(parsed, fmt_dt(state.clock.time()))
        except WebhookExists as exc:
            raise ApiError(422, "webhook-exists", "Webhook already exists for this event", str(exc)) from None
        return ok(request, {"webhooks": [h.to_api() for h in hooks]}, 201)

    @app.post("/api/webhooks/renew-signature-key")
    def renew_signature_key(request: Request) -> Response:
        Params(request.query_params, frozenset())
        state.signature_key = secrets.token_hex(16)
        return ok(request, {"signatureKey": state.signature_key})

    def _hook_id(hook_id: str) -> int:
        if not hook_id.isdigit():
            raise ApiError(404, "webhook-not-found", f'Webhook with id "{hook_id}" not found.', hook_id)
        return int(hook_id)

    @app.get("/api/webhooks/{hook_id}")
    def webhook_detail(request: Request, hook_id: str) -> Response:
        Params(request.query_params, frozenset())
        hook = state.webhooks.get(_hook_id(hook_id))
        if hook is None:
            raise ApiError(404, "webhook-not-found", f'Webhook with id "{hook_id}" not found.', hook_id)
        return ok(request, hook.to_api())

    @app.delete("/api/webhooks/{hook_id}")
    def delete_webhook(request: Request, hook_id: str) -> Response:
        Params(request.query_params, frozenset())
        if not state.webhooks.delete(_hook_id(hook_id)):
            raise ApiError(404, "webhook-not-found", f'Webhook with id "{hook_id}" not found.', hook_id)
        return ok(request, None)

    # ------------------------------------------------------------------ jobs

    def job_item(job: Job) -> dict:
        return {
            "jobId": job.job_id,
            "endpoint": job.endpoint,
            "creationTime": fmt_dt(job.created),
            "completionTime": fmt_dt(job.completed) if job.completed is not None else None,
            "status": job.status,
            "validUntil": fmt_dt(job.valid_until) if job.valid_until is not None else None,
            "language": job.language,
        }

    @app.get("/api/system/jobs")
    def list_jobs(request: Request) -> Response:
        p = Params(
            request.query_params,
            frozenset(
                {"status", "creationTimeFrom", "creationTimeTo", "completionTimeFrom", "completionTimeTo"}
            )
            | PAGING,
        )
        status = p.string("status")
        if status is not None and status not in TERMINAL | {"pending", "running"}:
            raise invalid("status", f'Invalid "status" parameter. Unsupported value "{status}".')
        lo, hi = p.datetime("creationTimeFrom"), p.datetime("creationTimeTo")
        clo, chi = p.datetime("completionTimeFrom"), p.datetime("completionTimeTo")
        page, per = p.paging(100, 500)
        jobs = [
            j
            for j in state.jobs.all()
            if (state.faults.jobs_listed or j.finished)
            and (status is None or j.status == status)
            and (lo is None or j.created >= lo)
            and (hi is None or j.created <= hi)
            and (clo is None or (j.completed is not None and j.completed >= clo))
            and (chi is None or (j.completed is not None and j.completed <= chi))
        ]
        rows, paginator = paginate(jobs, page, per)
        return ok(request, {"jobs": [job_item(j) for j in rows], "paginator": paginator})

    @app.get("/api/system/jobs/{job_id}")
    def job_detail(request: Request, job_id: str) -> Response:
        Params(request.query_params, frozenset())
        job, allowed = state.jobs.poll_detail(job_id)
        if job is None:
            raise ApiError(404, "job-not-found", f'Job with ID "{job_id}" not found.', job_id)
        if not allowed:
            raise ApiError(
                403,
                "job-detail-try-counter-exceeded-limit",
                "You have exceeded the limit of job detail request for unprocessed job "
                f'"{job_id}". Please wait for job:finished event after job is completed!',
                job_id,
            )
        item = job_item(job)
        detail = {
            **{k: item[k] for k in ("jobId", "endpoint", "creationTime", "completionTime")},
            "duration": f"{job.completed - job.created:.3f}" if job.completed is not None else None,
            "status": job.status,
            "resultUrl": f"{base_url(request)}/api-results/{job.result_name}" if job.result_name else None,
            "validUntil": item["validUntil"],
            "log": job.log,
            "language": job.language,
        }
        return ok(request, {"job": detail})

    # ------------------------------------------------------------------ result files (no auth)

    @app.get("/api-results/{name}")
    def result_file(request: Request, name: str) -> Response:
        rid = _rid(request)
        job = state.jobs.by_result(name)
        if job is None:
            return _error_response(rid, 404, "file-not-found", f'File "{name}" not found.', name)
        expired = job.valid_until is not None and state.clock.time() > job.valid_until
        if expired or state.faults.expire_results:
            return _error_response(
                rid, 410, "result-expired", "The result file has expired; request a new snapshot.", job.job_id
            )
        path = Path(state.jobs.results_dir) / name
        if state.faults.truncate_gzip:
            data = path.read_bytes()
            return Response(
                data[: len(data) // 2], media_type="application/gzip", headers={"X-Request-ID": rid}
            )
        return FileResponse(path, media_type="application/gzip", headers={"X-Request-ID": rid})

    return app
