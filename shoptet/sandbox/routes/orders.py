"""``/api/orders``: list, snapshot, change log, status list and detail."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from ..query import ORDER_FILTERS, PAGING, ApiError, Params, order_filter, paginate
from ..render import ORDER_DETAIL_INCLUDES, ORDER_SNAPSHOT_INCLUDES, order_list_item, render_order
from ..state import SandboxState
from ..store import Record
from ..vocab import ORDER_STATUSES, STATUS_META
from .common import StateDep, changes, includes, ok
from .snapshots import queue_snapshot

router = APIRouter(prefix="/api/orders")


def select_orders(state: SandboxState, p: Params) -> list[Record]:
    codes, pred = order_filter(p)
    if codes is not None:
        return [r for r in (state.store.record("orders", c) for c in codes) if r is not None]
    recs = state.store.records("orders")
    return recs if pred is None else [r for r in recs if pred(r)]


@router.get("")
def list_orders(request: Request, state: StateDep) -> Response:
    p = Params(request.query_params, ORDER_FILTERS | PAGING)
    page, per = p.paging(50, 50)
    rows, paginator = paginate(select_orders(state, p), page, per)
    return ok(request, {"orders": [order_list_item(r.data()) for r in rows], "paginator": paginator})


@router.get("/snapshot")
def orders_snapshot(request: Request, state: StateDep) -> Response:
    p = Params(request.query_params, ORDER_FILTERS | {"include"})
    inc = includes(p, ORDER_SNAPSHOT_INCLUDES)
    return queue_snapshot(request, state, "orders", select_orders(state, p), inc, p)


@router.get("/changes")
def order_changes(request: Request, state: StateDep) -> Response:
    return changes(request, state, "orders", "code", 20, 1000)


@router.get("/statuses")
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


@router.get("/{code}")
def order_detail(request: Request, code: str, state: StateDep) -> Response:
    p = Params(request.query_params, frozenset({"include"}))
    inc = includes(p, ORDER_DETAIL_INCLUDES)
    order = state.store.get("orders", code)
    if order is None:
        raise ApiError(404, "order-not-found", f'Order "{code}" not found.', code)
    return ok(request, {"order": render_order(order, inc, state.amount_as_number)})
