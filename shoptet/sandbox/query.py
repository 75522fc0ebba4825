"""Query-string validation, paging and entity filters, with Shoptet's error codes and messages."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from starlette.datastructures import QueryParams

from .formats import parse_dt
from .store import OrderIdx, ProductIdx, Record

MAX_CODES = 50
COMMON_PARAMS = frozenset({"language"})  # usable on every endpoint (reference §1)

ORDER_FILTERS = frozenset(
    {
        "statusId",
        "shippingGuid",
        "shippingCompanyCode",
        "paymentMethodGuid",
        "creationTimeFrom",
        "creationTimeTo",
        "codeFrom",
        "codeTo",
        "customerGuid",
        "email",
        "phone",
        "productCode",
        "changeTimeFrom",
        "changeTimeTo",
        "sourceId",
        "orderCodes",
    }
)
CUSTOMER_SNAPSHOT_FILTERS = frozenset({"creationTimeFrom", "creationTimeTo", "changeTimeFrom", "changeTimeTo"})
PRODUCT_FILTERS = frozenset(
    {
        "availabilityId",
        "availabilityWhenSoldOutId",
        "creationTimeFrom",
        "creationTimeTo",
        "visibility",
        "type",
        "brandName",
        "brandCode",
        "defaultCategoryGuid",
        "categoryGuid",
        "flag",
        "productCodes",
        "productGuids",
        "supplierGuid",
        "changeTimeFrom",
        "changeTimeTo",
    }
)
PAGING = frozenset({"page", "itemsPerPage"})


@dataclass
class ApiError(Exception):
    status: int
    code: str
    message: str
    instance: str = "unknown"
    headers: dict[str, str] | None = None


def invalid(name: str, message: str) -> ApiError:
    return ApiError(400, "invalid-parameter", message, name)


class Params:
    """Validated access to the query string; unknown names -> 400 like the live API."""

    def __init__(self, qp: QueryParams, allowed: frozenset[str]) -> None:
        self.qp = qp
        unknown = sorted({k for k in qp.keys() if k not in allowed and k not in COMMON_PARAMS})
        if unknown:
            raise invalid(unknown[0], f"Unsupported query parameters: {', '.join(unknown)}.")

    def string(self, name: str) -> str | None:
        v = self.qp.get(name)
        return v if v not in (None, "") else None

    def integer(self, name: str) -> int | None:
        v = self.string(name)
        if v is None:
            return None
        try:
            return int(v)
        except ValueError:
            raise invalid(name, f'Invalid "{name}" parameter. Expected integer, "{v}" given.') from None

    def datetime(self, name: str) -> float | None:
        v = self.string(name)
        if v is None:
            return None
        try:
            return parse_dt(v)
        except ValueError:
            raise invalid(
                name,
                f'Invalid "{name}" parameter. Expected ISO 8601 date-time '
                f'(e.g. 2017-12-12T22:08:01+0100; encode "+" as %2B), "{v}" given.',
            ) from None

    def codes(self, name: str) -> list[str] | None:
        if name not in self.qp:
            return None
        raw = self.qp.get(name) or ""
        vals = [c.strip() for c in raw.split(",") if c.strip()]
        if not vals:
            raise ApiError(400, "missing-parameter", f'Missing value for parameter "{name}".', name)
        if len(vals) > MAX_CODES:
            raise invalid(
                name,
                f'Invalid "{name}" parameter. Expected max. {MAX_CODES} elements, but {len(vals)} given.',
            )
        return list(dict.fromkeys(vals))

    def paging(self, default: int, maximum: int) -> tuple[int, int]:
        page = self.integer("page")
        per = self.integer("itemsPerPage")
        page = 1 if page is None else page
        if page < 1:
            raise invalid("page", 'Invalid "page" parameter. Expected positive integer.')
        per = default if per is None else per
        if per < 1:
            raise invalid("itemsPerPage", 'Invalid "itemsPerPage" parameter. Expected positive integer.')
        return page, min(per, maximum)  # a too-high value is clamped to the max (OA "Paging")


def paginate(items: list, page: int, per: int) -> tuple[list, dict]:
    total = len(items)
    chunk = items[(page - 1) * per : page * per]
    return chunk, {
        "totalCount": total,
        "page": page,
        "pageCount": math.ceil(total / per),
        "itemsOnPage": len(chunk),
        "itemsPerPage": per,
    }


Check = Callable[[Record], bool]


def _time_checks(p: Params, checks: list[Check]) -> None:
    # bounds are inclusive on both ends (HEBLO live)
    lo, hi = p.datetime("creationTimeFrom"), p.datetime("creationTimeTo")
    if lo is not None:
        checks.append(lambda r: r.created is not None and r.created >= lo)
    if hi is not None:
        checks.append(lambda r: r.created is not None and r.created <= hi)
    clo, chi = p.datetime("changeTimeFrom"), p.datetime("changeTimeTo")
    if clo is not None:
        checks.append(lambda r: r.changed is not None and r.changed >= clo)
    if chi is not None:
        checks.append(lambda r: r.changed is not None and r.changed <= chi)


def _all(checks: list[Check]) -> Check | None:
    if not checks:
        return None
    return lambda r: all(c(r) for c in checks)


def _code_key(code: str) -> tuple[int, int | str]:
    return (0, int(code)) if code.isdigit() else (1, code)


def order_filter(p: Params) -> tuple[list[str] | None, Check | None]:
    """(orderCodes, None) when codes are given (they disable other filters), else (None, predicate)."""
    codes = p.codes("orderCodes")
    if codes is not None:
        return codes, None
    checks: list[Check] = []
    _time_checks(p, checks)

    def idx(r: Record) -> OrderIdx:
        return r.idx

    if (status := p.integer("statusId")) is not None:
        checks.append(lambda r: idx(r).status == status)
    if (source := p.integer("sourceId")) is not None:
        checks.append(lambda r: idx(r).source == source)
    if shipping := p.string("shippingGuid"):
        checks.append(lambda r: idx(r).shipping == shipping)
    if payment := p.string("paymentMethodGuid"):
        checks.append(lambda r: idx(r).payment == payment)
    if customer := p.string("customerGuid"):
        checks.append(lambda r: idx(r).customer == customer)
    if email := p.string("email"):
        low = email.lower()
        checks.append(lambda r: idx(r).email == low)
    if phone := p.string("phone"):
        if not phone.startswith("+"):
            raise invalid("phone", 'Invalid "phone" parameter. International format only (+420123456789).')
        checks.append(lambda r: idx(r).phone == phone)
    if product_code := p.string("productCode"):
        checks.append(lambda r: product_code in idx(r).product_codes)
    if code_from := p.string("codeFrom"):
        kf = _code_key(code_from)
        checks.append(lambda r: _code_key(r.key) >= kf)
    if code_to := p.string("codeTo"):
        kt = _code_key(code_to)
        checks.append(lambda r: _code_key(r.key) <= kt)
    # shippingCompanyCode is accepted but not filtered on (not part of the stored index)
    return None, _all(checks)


def customer_snapshot_filter(p: Params) -> Check | None:
    checks: list[Check] = []
    _time_checks(p, checks)
    return _all(checks)


def customer_list_filter(p: Params) -> Check | None:
    checks: list[Check] = []
    if email := p.string("email"):
        low = email.lower()
        checks.append(lambda r: low in r.idx.emails)
    if phone := p.string("phone"):
        checks.append(lambda r: phone in r.idx.phones)
    return _all(checks)


def product_filter(p: Params) -> tuple[list[str] | None, list[str] | None, Check | None]:
    """(productCodes, productGuids, predicate); codes/guids are exclusive and disable other filters."""
    codes = p.codes("productCodes")
    guids = p.codes("productGuids")
    if codes is not None and guids is not None:
        raise invalid(
            "productCodes",
            'Invalid "productCodes" parameter. You can use "productCodes" or "productGuids", but not both.',
        )
    if codes is not None or guids is not None:
        return codes, guids, None
    checks: list[Check] = []
    _time_checks(p, checks)

    def idx(r: Record) -> ProductIdx:
        return r.idx

    if (avail := p.integer("availabilityId")) is not None:
        checks.append(lambda r: avail in idx(r).availability)
    if (sold := p.integer("availabilityWhenSoldOutId")) is not None:
        checks.append(lambda r: sold in idx(r).sold_out)
    if visibility := p.string("visibility"):
        checks.append(lambda r: idx(r).visibility == visibility)
    if ptype := p.string("type"):
        checks.append(lambda r: idx(r).type == ptype)
    if brand_name := p.string("brandName"):
        checks.append(lambda r: idx(r).brand_name == brand_name)
    if brand_code := p.string("brandCode"):
        checks.append(lambda r: idx(r).brand_code == brand_code)
    if default_cat := p.string("defaultCategoryGuid"):
        checks.append(lambda r: idx(r).default_category == default_cat)
    if cat := p.string("categoryGuid"):
        checks.append(lambda r: cat in idx(r).categories or idx(r).default_category == cat)
    if flag := p.string("flag"):
        checks.append(lambda r: flag in idx(r).flags)
    if supplier := p.string("supplierGuid"):
        checks.append(lambda r: idx(r).supplier == supplier)
    return None, None, _all(checks)
