"""What every router shares: the state dependency, the response envelope and the query helpers.

Handlers get the running sandbox by dependency injection (``state: StateDep``), never by closure, so
a router module can be read, and tested, on its own.
"""

from __future__ import annotations

from typing import Annotated

import orjson
from fastapi import Depends, Request
from fastapi.responses import Response

from ..formats import fmt_dt
from ..query import PAGING, ApiError, Params, invalid, paginate
from ..render import MISSING_MODULES, parse_includes
from ..state import SandboxState

JSON_CT = "application/json; charset=utf-8"
NO_REQUEST_ID = "00000000-0000-7000-8000-000000000000"


async def get_state(request: Request) -> SandboxState:
    """The sandbox behind this app (async, so FastAPI resolves it inline, not in the thread pool)."""
    return request.app.state.sandbox


StateDep = Annotated[SandboxState, Depends(get_state)]


# ---------------------------------------------------------------------- the response envelope


def envelope(request_id: str, data: object, errors: list[dict] | None) -> bytes:
    return orjson.dumps({"data": data, "errors": errors, "metadata": {"requestId": request_id}})


def error_response(
    request_id: str,
    status: int,
    code: str,
    message: str,
    instance: str = "unknown",
    headers: dict[str, str] | None = None,
) -> Response:
    body = envelope(request_id, None, [{"errorCode": code, "message": message, "instance": instance}])
    return Response(body, status, media_type=JSON_CT, headers={"X-Request-ID": request_id, **(headers or {})})


def request_id(request: Request) -> str:
    """The id the gate gave this request (a fixed one if the gate did not run)."""
    return getattr(request.state, "request_id", None) or NO_REQUEST_ID


def ok(request: Request, data: object, status: int = 200) -> Response:
    rid = request_id(request)
    return Response(envelope(rid, data, None), status, media_type=JSON_CT, headers={"X-Request-ID": rid})


# ---------------------------------------------------------------------- query helpers


def includes(p: Params, allowed: frozenset[str]) -> frozenset[str]:
    """The ``include`` sections asked for; 400 for an unknown one, 403 for an inactive module."""
    try:
        inc = parse_includes(p.string("include"), allowed)
    except ValueError as exc:
        raise invalid("include", f'Invalid "include" parameter. Unsupported value "{exc}".') from None
    for name, module in MISSING_MODULES.items():
        if name in inc:
            raise ApiError(403, "missing-module", f'Module "{module}" is not active for this e-shop.', "include")
    return inc


def changes(request: Request, state: SandboxState, entity: str, key_name: str, default: int, maximum: int) -> Response:
    """``GET /api/<entity>/changes``: the paged change log since ``from``."""
    p = Params(request.query_params, frozenset({"from", "changeType"}) | PAGING)
    since = p.datetime("from")
    if since is None:
        raise ApiError(400, "missing-parameter", 'Missing value for parameter "from".', "from")
    change_type = p.string("changeType")
    if change_type is not None and change_type not in ("add", "edit", "delete"):
        raise invalid("changeType", 'Invalid "changeType" parameter. Supported values are "edit", "delete".')
    page, per = p.paging(default, maximum)
    rows, paginator = paginate(state.store.changes(entity, since, change_type), page, per)
    return ok(
        request,
        {
            "changes": [{key_name: k, "changeTime": fmt_dt(t), "changeType": ct} for k, t, ct in rows],
            "paginator": paginator,
        },
    )
