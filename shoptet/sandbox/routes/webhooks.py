"""``/api/webhooks``: list, register (in bulk), renew the signature key, detail and delete."""

from __future__ import annotations

import secrets

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response

from ..formats import fmt_dt
from ..query import PAGING, ApiError, Params, paginate
from ..webhooks import EVENTS, WebhookExists
from .common import StateDep, ok

router = APIRouter(prefix="/api/webhooks")

MAX_BATCH = 50
MAX_URL = 2000


def _not_found(hook_id: str) -> ApiError:
    return ApiError(404, "webhook-not-found", f'Webhook with id "{hook_id}" not found.', hook_id)


def _hook_id(hook_id: str) -> int:
    if not hook_id.isdigit():
        raise _not_found(hook_id)
    return int(hook_id)


def _parse_items(raw: bytes) -> list:
    """The ``data`` array of a registration body: 422 if absent or empty, 413 if too long."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ApiError(422, "invalid-request-data", "Request body is not valid JSON.", "data") from None
    items = body.get("data") if isinstance(body, dict) else None
    if not isinstance(items, list) or not items:
        raise ApiError(422, "invalid-request-data", 'Expected "data" to be a non-empty array.', "data")
    if len(items) > MAX_BATCH:
        raise ApiError(413, "invalid-request-data", "At most 50 webhooks can be registered at once.", "data")
    return items


def _parse_hook(i: int, item: object) -> tuple[str, str, str | None]:
    """One ``{event, url, sendPayload}`` item, validated the way Shoptet does."""
    if not isinstance(item, dict):
        raise ApiError(422, "invalid-request-data", "Webhook must be an object.", f"data.{i}")
    event, url, send = item.get("event"), item.get("url"), item.get("sendPayload")
    if event not in EVENTS:
        raise ApiError(400, "invalid-request-data", f'Unsupported webhook event "{event}".', f"data.{i}.event")
    if not isinstance(url, str) or not url.startswith(("http://", "https://")) or len(url) > MAX_URL:
        raise ApiError(
            400,
            "invalid-request-data",
            "Webhook URL must be an http(s) URL of at most 2000 characters.",
            f"data.{i}.url",
        )
    if send not in ("full", None):
        raise ApiError(400, "invalid-request-data", 'sendPayload must be "full" or null.', f"data.{i}.sendPayload")
    return event, url, send


@router.get("")
def list_webhooks(request: Request, state: StateDep) -> Response:
    p = Params(request.query_params, PAGING)
    page, per = p.paging(50, 50)
    rows, paginator = paginate(state.webhooks.list(), page, per)
    return ok(request, {"webhooks": [h.to_api() for h in rows], "paginator": paginator})


@router.post("")
async def register_webhooks(request: Request, state: StateDep) -> Response:
    Params(request.query_params, frozenset())
    parsed = [_parse_hook(i, item) for i, item in enumerate(_parse_items(await request.body()))]
    try:
        hooks = state.webhooks.register_many(parsed, fmt_dt(state.clock.time()))
    except WebhookExists as exc:
        raise ApiError(422, "webhook-exists", "Webhook already exists for this event", str(exc)) from None
    return ok(request, {"webhooks": [h.to_api() for h in hooks]}, 201)


@router.post("/renew-signature-key")
def renew_signature_key(request: Request, state: StateDep) -> Response:
    Params(request.query_params, frozenset())
    state.signature_key = secrets.token_hex(16)
    return ok(request, {"signatureKey": state.signature_key})


@router.get("/{hook_id}")
def webhook_detail(request: Request, hook_id: str, state: StateDep) -> Response:
    Params(request.query_params, frozenset())
    hook = state.webhooks.get(_hook_id(hook_id))
    if hook is None:
        raise _not_found(hook_id)
    return ok(request, hook.to_api())


@router.delete("/{hook_id}")
def delete_webhook(request: Request, hook_id: str, state: StateDep) -> Response:
    Params(request.query_params, frozenset())
    if not state.webhooks.delete(_hook_id(hook_id)):
        raise _not_found(hook_id)
    return ok(request, None)
