"""``/api/products``: list, snapshot, change log and detail."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from ..query import PAGING, PRODUCT_FILTERS, ApiError, Params, paginate, product_filter
from ..render import PRODUCT_INCLUDES, PRODUCT_LIST_INCLUDES, product_list_item, render_product
from ..state import SandboxState
from ..store import Record
from .common import StateDep, changes, includes, ok
from .snapshots import queue_snapshot

router = APIRouter(prefix="/api/products")


def select_products(state: SandboxState, p: Params) -> list[Record]:
    codes, guids, pred = product_filter(p)
    if guids is not None:
        return [r for r in (state.store.record("products", g) for g in guids) if r is not None]
    recs = state.store.records("products")
    if codes is not None:
        wanted = set(codes)
        return [r for r in recs if wanted.intersection(r.idx.codes)]
    return recs if pred is None else [r for r in recs if pred(r)]


@router.get("")
def list_products(request: Request, state: StateDep) -> Response:
    p = Params(request.query_params, PRODUCT_FILTERS | PAGING | {"include"})
    inc = includes(p, PRODUCT_LIST_INCLUDES)
    page, per = p.paging(20, 1000)
    rows, paginator = paginate(select_products(state, p), page, per)
    return ok(request, {"products": [product_list_item(r.data(), inc) for r in rows], "paginator": paginator})


@router.get("/snapshot")
def products_snapshot(request: Request, state: StateDep) -> Response:
    p = Params(request.query_params, PRODUCT_FILTERS | {"include"})
    inc = includes(p, PRODUCT_INCLUDES)
    return queue_snapshot(request, state, "products", select_products(state, p), inc, p)


@router.get("/changes")
def product_changes(request: Request, state: StateDep) -> Response:
    return changes(request, state, "products", "guid", 1000, 1000)


@router.get("/{guid}")
def product_detail(request: Request, guid: str, state: StateDep) -> Response:
    p = Params(request.query_params, frozenset({"include"}))
    inc = includes(p, PRODUCT_INCLUDES)
    product = state.store.get("products", guid)
    if product is None:
        raise ApiError(404, "product-not-found", f'Product with guid "{guid}" not found.', guid)
    return ok(request, render_product(product, inc))  # product detail is not wrapped (reference §6)
