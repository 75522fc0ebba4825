"""``/api/customers``: list, snapshot, change log and detail."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import APIRouter, Request
from fastapi.responses import Response

from ..query import (
    CUSTOMER_SNAPSHOT_FILTERS,
    PAGING,
    ApiError,
    Params,
    customer_list_filter,
    customer_snapshot_filter,
    paginate,
)
from ..render import customer_list_item
from ..state import SandboxState
from ..store import Record
from .common import StateDep, changes, ok
from .snapshots import queue_snapshot

router = APIRouter(prefix="/api/customers")


def select_customers(
    state: SandboxState, p: Params, pred_factory: Callable[[Params], Callable[[Record], bool] | None]
) -> list[Record]:
    pred = pred_factory(p)
    recs = state.store.records("customers")
    return recs if pred is None else [r for r in recs if pred(r)]


@router.get("")
def list_customers(request: Request, state: StateDep) -> Response:
    p = Params(request.query_params, frozenset({"email", "phone"}) | PAGING)
    page, per = p.paging(20, 1000)
    rows, paginator = paginate(select_customers(state, p, customer_list_filter), page, per)
    return ok(request, {"customers": [customer_list_item(r.data()) for r in rows], "paginator": paginator})


@router.get("/snapshot")
def customers_snapshot(request: Request, state: StateDep) -> Response:
    p = Params(request.query_params, CUSTOMER_SNAPSHOT_FILTERS)
    records = select_customers(state, p, customer_snapshot_filter)
    return queue_snapshot(request, state, "customers", records, frozenset(), p)


@router.get("/changes")
def customer_changes(request: Request, state: StateDep) -> Response:
    return changes(request, state, "customers", "guid", 20, 20)


@router.get("/{guid}")
def customer_detail(request: Request, guid: str, state: StateDep) -> Response:
    Params(request.query_params, frozenset())
    customer = state.store.get("customers", guid)
    if customer is None:
        raise ApiError(404, "customer-not-found", f'Customer with guid "{guid}" not found', guid)
    return ok(request, {"customer": customer})
